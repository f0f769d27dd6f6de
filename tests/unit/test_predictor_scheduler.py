"""The scheduler on real engines (tiny ORT GenAI and transformers models): batching, limits, timeouts."""

from __future__ import annotations

import threading
import time

import pytest

from slmops.predictor import metrics
from slmops.predictor.engines import Generation, Sampling
from slmops.predictor.loading import load_engine
from slmops.predictor.scheduler import Job, Limits, Overloaded, Scheduler, TimedOut
from tests.integration._models import tiny_checkpoint, tiny_onnx

PROMPTS = ["hello world", "the quick brown", "question: what is 2 + 3?", "user: hi there"]


@pytest.fixture(scope="module", params=["ort-genai", "transformers"])
def engine(request, tmp_path_factory):
    folder = (
        tiny_onnx(tmp_path_factory) if request.param == "ort-genai" else tiny_checkpoint(tmp_path_factory)
    )
    engine = load_engine(folder)
    yield engine
    engine.close()


class Collector:
    """Events of several jobs, with a wait for the ends."""

    def __init__(self) -> None:
        self.events: dict[int, list[tuple]] = {}
        self.cond = threading.Condition()

    def sink(self, index: int):
        def put(event: tuple) -> None:
            with self.cond:
                self.events.setdefault(index, []).append(event)
                self.cond.notify_all()

        return put

    def ended(self, index: int) -> list[tuple]:
        return [e for e in self.events.get(index, []) if e[0] in ("end", "error")]

    def wait(self, indexes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(self.ended(i) for i in indexes):
                left = deadline - time.monotonic()
                assert left > 0, f"jobs did not end: {self.events}"
                self.cond.wait(left)

    def result(self, index: int) -> Generation:
        (event,) = [e for e in self.ended(index)]
        assert event[0] == "end", event
        return event[2]


def _job(engine, prompt: str, sink, budget: int = 12, **kwargs) -> Job:
    return Job(engine.encode(prompt), budget, kwargs.pop("sampling", Sampling()), sink, **kwargs)


def _batch_sizes() -> tuple[float, float]:
    """(observations, observations of a batch of 1) of the batch-size histogram so far."""
    samples = {s.name + str(s.labels.get("le", "")): s.value for s in metrics.BATCH_SIZE.collect()[0].samples}
    return samples["slmops_predictor_batch_size_count"], samples["slmops_predictor_batch_size_bucket1.0"]


def test_requests_arriving_together_run_as_one_batch_with_the_same_answers(engine):
    alone = [engine.generate(p, max_tokens=12) for p in PROMPTS]
    scheduler = Scheduler(engine, Limits(batch_window_s=0.05))
    before = _batch_sizes()
    try:
        out = Collector()
        scheduler.submit_all([_job(engine, p, out.sink(i)) for i, p in enumerate(PROMPTS)])
        out.wait(range(len(PROMPTS)))
    finally:
        scheduler.stop()
    assert [out.result(i) for i in range(len(PROMPTS))] == alone
    after = _batch_sizes()
    steps, single = after[0] - before[0], after[1] - before[1]
    assert steps > 0 and single < steps, "every step ran one sequence: nothing was batched"


def test_n_sequences_of_a_seeded_request_are_reproducible_and_differ(engine):
    scheduler = Scheduler(engine, Limits())
    sampling = Sampling(temperature=1.5, seed=7)
    try:
        runs = []
        for _ in range(2):
            out = Collector()
            job = _job(engine, "hello", out.sink(0), budget=10, n=3, sampling=sampling)
            scheduler.submit(job)
            deadline = time.monotonic() + 60
            while len(out.ended(0)) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            runs.append(sorted((e[1], e[2].text) for e in out.ended(0)))
    finally:
        scheduler.stop()
    assert runs[0] == runs[1]
    assert len({text for _, text in runs[0]}) > 1


def test_a_full_queue_refuses_with_a_retry_after(engine):
    scheduler = Scheduler(engine, Limits(max_concurrency=1, max_queue=2, batch_window_s=0))
    try:
        out = Collector()
        scheduler.submit_all([_job(engine, "hello", out.sink(i), budget=60) for i in range(2)])
        with pytest.raises(Overloaded) as full:
            scheduler.submit_all([_job(engine, "hello", out.sink(i), budget=5) for i in (2, 3, 4)])
        assert full.value.retry_after >= 1
        out.wait([0, 1])
        out2 = Collector()
        scheduler.submit(_job(engine, "hello", out2.sink(0), budget=3))  # room again
        out2.wait([0])
    finally:
        scheduler.stop()


def test_cancelled_and_timed_out_jobs_free_their_slots(engine):
    scheduler = Scheduler(engine, Limits(max_concurrency=2, batch_window_s=0))
    try:
        out = Collector()
        slow_sink = out.sink(1)

        def slow(event: tuple) -> None:  # a slow consumer: the deadline passes mid-generation
            slow_sink(event)
            if event[0] == "piece" and len(out.events[1]) == 1:
                time.sleep(0.3)

        long = _job(engine, "hello", out.sink(0), budget=100)
        late = _job(engine, "the quick brown", slow, budget=100, deadline=time.monotonic() + 0.2)
        scheduler.submit_all([long, late])
        out.wait([1])
        assert isinstance(out.ended(1)[0][2], TimedOut)
        scheduler.cancel(long)
        deadline = time.monotonic() + 10
        while scheduler.busy:
            assert time.monotonic() < deadline, "slots were not freed"
            time.sleep(0.01)
        assert not out.ended(0)  # a cancelled job gets no end: its client is gone
        expired = _job(engine, "hello", out.sink(2), deadline=time.monotonic() - 1)
        scheduler.submit(expired)
        out.wait([2])
        assert isinstance(out.ended(2)[0][2], TimedOut)
    finally:
        scheduler.stop()


def test_logprobs_are_the_log_softmax_of_the_chosen_tokens(engine):
    result = engine.generate("hello world", max_tokens=5, logprobs=3)
    assert len(result.logprobs) == 5
    for entry in result.logprobs:
        assert entry.logprob <= 0
        assert len(entry.top) == 3
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert entry.top[0] == (entry.token_id, pytest.approx(entry.logprob))  # greedy: the best one
    assert b"".join(engine.token_bytes(e.token_id) for e in result.logprobs).decode() == result.text


def test_a_request_arriving_just_after_another_joins_its_batch(engine):
    alone = [engine.generate(p, max_tokens=20) for p in PROMPTS[:2]]
    scheduler = Scheduler(engine, Limits(batch_window_s=0, batch_gap_s=0))  # no hold: it joins at once
    merged_before = metrics.COHORTS_MERGED._value.get()
    try:
        out = Collector()
        first_sink, second = out.sink(0), _job(engine, PROMPTS[1], out.sink(1), budget=20)

        def first(event: tuple) -> None:  # the second request arrives after 3 tokens of the first
            first_sink(event)
            if event[0] == "piece" and len(out.events[0]) == 3:
                scheduler.submit(second)

        scheduler.submit(_job(engine, PROMPTS[0], first, budget=20))
        out.wait([0, 1])
    finally:
        scheduler.stop()
    assert metrics.COHORTS_MERGED._value.get() == merged_before + 1
    assert [out.result(0), out.result(1)] == alone


def test_a_cohort_about_to_end_is_not_restarted_for_an_arrival(engine):
    """Prefilling the first request again would cost more than the two steps it has left beside
    the second: the second gets a cohort of its own, and both answers stay the same."""
    prompt = PROMPTS[2]
    assert len(engine.encode(prompt)) + 3 > 2.0 * 2  # the carried prefix is past what 2 steps repay
    alone = [engine.generate(prompt, max_tokens=5), engine.generate(PROMPTS[1], max_tokens=20)]
    scheduler = Scheduler(engine, Limits(batch_window_s=0, batch_gap_s=0))
    merged_before = metrics.COHORTS_MERGED._value.get()
    try:
        out = Collector()
        first_sink, second = out.sink(0), _job(engine, PROMPTS[1], out.sink(1), budget=20)

        def first(event: tuple) -> None:  # the second arrives after 3 of the first's 5 tokens
            first_sink(event)
            if event[0] == "piece" and len(out.events[0]) == 3:
                scheduler.submit(second)

        scheduler.submit(_job(engine, prompt, first, budget=5))
        out.wait([0, 1])
    finally:
        scheduler.stop()
    assert metrics.COHORTS_MERGED._value.get() == merged_before
    assert [out.result(0), out.result(1)] == alone


@pytest.mark.parametrize("hold", [True, False], ids=["held-until-the-burst-ends", "no-hold"])
def test_arrivals_over_several_steps_start_together_while_a_cohort_runs(engine, hold):
    """Three requests arriving one step apart beside a running request: held until the burst is
    over, they start (or join it) in one cohort restart, not one per step."""
    limits = Limits(batch_window_s=0, batch_gap_s=0.1 if hold else 0.0, merge_hold_s=0.5)
    scheduler = Scheduler(engine, limits)
    started_before = metrics.COHORTS_STARTED._value.get()
    try:
        out = Collector()
        first_sink = out.sink(0)
        later = [_job(engine, PROMPTS[i], out.sink(i), budget=8) for i in (1, 2, 3)]

        def first(event: tuple) -> None:  # one arrival after each of the first three tokens
            first_sink(event)
            pieces = len([e for e in out.events[0] if e[0] == "piece"])
            if event[0] == "piece" and pieces <= 3:
                scheduler.submit(later[pieces - 1])

        scheduler.submit(_job(engine, PROMPTS[0], first, budget=64))
        out.wait([0, 1, 2, 3])
    finally:
        scheduler.stop()
    starts = metrics.COHORTS_STARTED._value.get() - started_before
    assert starts == (2 if hold else 4)  # the first request's cohort, then one or three more
    for i in range(4):
        assert out.result(i).completion_tokens > 0
