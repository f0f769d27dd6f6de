"""Admission and batching: many requests at once on one engine.

Requests enter a bounded waiting queue (`submit` raises `Overloaded` past it).
A handler first `reserve`s its places, before it tokenizes anything, so a full
queue turns a request away without spending work on it.
One scheduler thread owns the engine. It starts *cohorts* (a batch of
sequences with the same sampling options and adapter, see `engines.py`) from
the waiting requests while free slots remain, and advances every running
cohort by one token per round, so:

- requests that arrive together are decoded in one batched forward pass;
- a request that arrives while others run starts at the next round, without
  waiting for them to finish (its cohort runs beside theirs);
- a sequence that finishes, is cancelled (its client went away) or passes its
  deadline frees its slot at once, and its cohort ends with its last sequence.

Each cohort reads every weight once per step, so on a CPU one cohort of 8
sequences costs about 3.6 times one of 1 (39 ms against 11), while eight
cohorts of 1 cost 8 times; a prompt token costs about a third of a decode step
(a 6-token prefill: 19 ms). Measured on the Qwen2.5-0.5B shape in int4, 2
cores. So:

- when nothing runs, the first arrival starts at once (a batching window,
  `batch_window_s`, can hold it back for a burst to gather: off by default, as
  it adds its length to every lone request's time to first token);
- an arrival joins a young cohort (its sequences have at most `merge_steps`
  tokens): the cohort restarts with it, its sequences prefilled again with
  the tokens they already have. It does when that prefill is cheaper than the
  weight passes a second cohort beside it would add: at most `merge_tokens`
  tokens, and at most `MERGE_TOKENS_PER_STEP` per step the two would run
  together. Older cohorts are left alone. While cohorts run, arrivals are held
  until no request came for `batch_gap_s` (at most `merge_hold_s`): requests
  of a burst reach the server over several steps, and each restart prefills
  the cohort again, so a burst joins in one restart rather than one per step
  (8 clients at once, 0.5B shape: 190 tokens/s held, 178 without).

Seeded sampling gets a cohort of its own, so a seed gives the same answer
whatever else runs. Everything a request receives (pieces, logprobs, the end)
goes through its `sink`, called from this thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmops.core import net
from slmops.predictor import metrics
from slmops.predictor.engines import Engine, Sampling, SequenceState, TokenLogprob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """How much the predictor takes on at once (flags of `python -m slmops.predictor`)."""

    max_concurrency: int = 8  # sequences decoded at once, across cohorts
    max_queue: int = 64  # requests waiting for a slot
    max_tokens_cap: int = 4096  # the largest max_tokens a request may ask for
    max_body_bytes: int = net.MAX_BODY_BYTES  # request bodies past this get 413
    request_timeout_s: float = 300.0  # waiting plus running
    batch_window_s: float = 0.0  # when nothing runs, the longest a burst may take to gather (0: none)
    batch_gap_s: float = 0.015  # ... and it is over once no request came for this long
    merge_steps: int = 16  # a cohort whose sequences have this few tokens takes new arrivals
    merge_tokens: int = 512  # ... when prefilling its sequences again costs at most this many tokens
    merge_hold_s: float = 0.05  # while cohorts run, the longest arrivals are held for a burst to end


# A prompt token costs about a third of a decode step, and a second cohort beside another about
# two thirds of a step more per step (1 + 7 rows: 46 ms a step; 8 rows: 39 ms): a merge pays off
# while it prefills fewer than ~2 tokens per step the two would run together.
MERGE_TOKENS_PER_STEP = 2.0


class Overloaded(Exception):
    """The waiting queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is at capacity; retry after {retry_after} s")
        self.retry_after = retry_after


class TimedOut(Exception):
    """The request waited or ran longer than its timeout."""


# What a sink receives: ("piece", row, text, TokenLogprob | None) for each token;
# ("end", row, Generation) when a sequence ends; ("error", None, exception) when
# the request fails as a whole.
Sink = Callable[[tuple[Any, ...]], None]


@dataclass(eq=False)
class Job:
    """One request: n sequences of the same prompt."""

    prompt_ids: list[int]
    budget: int
    sampling: Sampling
    sink: Sink
    n: int = 1
    stops: list[str] = field(default_factory=list)
    logprobs: int | None = None
    model: str = ""
    deadline: float = math.inf
    cancelled: bool = False  # set by the caller when its client goes away
    submitted: float = field(default_factory=time.monotonic)
    id: int = field(default_factory=itertools.count().__next__)

    def key(self) -> tuple:
        """Jobs with equal keys may share a cohort."""
        s = self.sampling
        if s.greedy:
            return (s.adapter, "greedy")
        if s.seed is not None:
            return (s.adapter, "seeded", self.id)
        return (s.adapter, s.temperature, s.top_p)


@dataclass(eq=False)
class _Row:
    job: Job
    index: int  # which of the job's n sequences
    state: SequenceState


@dataclass(eq=False)
class _Running:
    cohort: Any
    rows: list[_Row]
    want_logits: bool
    key: tuple = ()
    steps: int = 0


class Scheduler:
    """Owns the engine; `submit` from any thread, `stop` to end it."""

    def __init__(self, engine: Engine, limits: Limits | None = None):
        self.engine = engine
        self.limits = limits or Limits()
        self._waiting: collections.deque[Job] = collections.deque()
        self._reserved = 0  # places promised to requests still tokenizing their prompts
        self._running: list[_Running] = []
        self._busy = 0  # sequences in running cohorts
        self._cond = threading.Condition()
        self._stopped = False
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self._rate: collections.deque[tuple[float, int]] = collections.deque()  # (when, tokens)
        self._thread = threading.Thread(target=self._loop, name="slmops-scheduler", daemon=True)
        self._thread.start()

    # ---- called from request handlers -------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job, or raise Overloaded when the waiting queue is full."""
        self.submit_all([job])

    def reserve(self, count: int) -> None:
        """Promise `count` places in the queue, or raise Overloaded when it cannot hold them."""
        with self._cond:
            if len(self._waiting) + self._reserved + count > self.limits.max_queue:
                metrics.REJECTED.labels("queue_full").inc()
                raise Overloaded(self.retry_after())
            self._reserved += count

    def release(self, count: int) -> None:
        """Give back places reserved for jobs that will not be submitted."""
        with self._cond:
            self._reserved = max(0, self._reserved - count)

    def submit_all(self, jobs: list[Job], reserved: int = 0) -> None:
        """Queue jobs together, or none of them (Overloaded) when the queue cannot take them all.

        `reserved` places promised by `reserve` are used (and given back) first.
        """
        with self._cond:
            self._reserved = max(0, self._reserved - reserved)
            if len(self._waiting) + self._reserved + len(jobs) > self.limits.max_queue:
                metrics.REJECTED.labels("queue_full").inc()
                raise Overloaded(self.retry_after())
            self._waiting.extend(jobs)
            metrics.QUEUE_DEPTH.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away); its slots free at the next round."""
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue ahead of it over the slots, at the recent pace."""
        pace = sum(self._durations) / len(self._durations) if self._durations else 1.0
        ahead = len(self._waiting) + 1
        return max(1, min(60, math.ceil(pace * ahead / self.limits.max_concurrency)))

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # ---- the scheduler thread ----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    break
                if not self._running:
                    self._wait_for_work()
                    if self._stopped:
                        break
                starts = self._take_cohorts() if self._burst_over() else []
            for jobs in starts:
                young = self._young_cohort(jobs)
                if young is not None:
                    self._merge(young, jobs)
                else:
                    self._start(jobs)
            for running in list(self._running):
                self._advance(running)
            self._publish()
        for running in self._running:
            self._finish(running, TimedOut("the server is shutting down"))
        self._running.clear()
        for job in self._waiting:
            job.sink(("error", None, TimedOut("the server is shutting down")))

    def _wait_for_work(self) -> None:
        """Sleep until a job waits, or a deadline; then let a burst gather (see the module doc)."""
        while not self._stopped and not self._live_waiting():
            self._cond.wait(timeout=self._next_deadline())
            self._expire_waiting()
        limits = self.limits
        if not self._waiting or limits.batch_window_s <= 0:
            return
        end = time.monotonic() + limits.batch_window_s
        while not self._stopped and len(self._waiting) < limits.max_concurrency:
            seen = len(self._waiting)
            left = min(end - time.monotonic(), limits.batch_gap_s)
            if left <= 0:
                break
            self._cond.wait(timeout=left)
            if len(self._waiting) == seen:  # nobody came within the gap: the burst is over
                break

    def _burst_over(self) -> bool:
        """Whether waiting jobs may start now. While cohorts run, arrivals are held until no request
        came for `batch_gap_s` (or the oldest has waited `merge_hold_s`): a burst then joins a young
        cohort in one restart instead of one restart per step it took to arrive."""
        if not self._running or not self._waiting:
            return True
        now = time.monotonic()
        newest = max(job.submitted for job in self._waiting)
        oldest = min(job.submitted for job in self._waiting)
        return now - newest >= self.limits.batch_gap_s or now - oldest >= self.limits.merge_hold_s

    def _live_waiting(self) -> bool:
        self._expire_waiting()
        return bool(self._waiting)

    def _next_deadline(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, min(j.deadline for j in self._waiting) - time.monotonic())

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._waiting if j.cancelled or j.deadline <= now]:
            self._waiting.remove(job)
            if not job.cancelled:
                metrics.REJECTED.labels("timeout").inc()
                job.sink(("error", None, TimedOut("the request waited past its timeout")))

    def _take_cohorts(self) -> list[list[Job]]:
        """Groups of waiting jobs to start now, oldest first, while slots remain."""
        self._expire_waiting()
        free = self.limits.max_concurrency - self._busy
        starts: list[list[Job]] = []
        while self._waiting and free >= self._waiting[0].n:
            head = self._waiting.popleft()
            group, free = [head], free - head.n
            key = head.key()
            for job in list(self._waiting):
                if job.key() == key and job.n <= free:
                    self._waiting.remove(job)
                    group.append(job)
                    free -= job.n
            starts.append(group)
            self._busy += sum(j.n for j in group)
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        return starts

    def _young_cohort(self, jobs: list[Job]) -> _Running | None:
        """A running cohort the jobs may join: same key, young, and cheap to prefill again
        against the steps it would otherwise run beside theirs (see the module doc)."""
        key = jobs[0].key()
        budget = max(job.budget for job in jobs)
        for running in self._running:
            live = [row for row in running.rows if not row.state.done]
            if running.key != key or not live:
                continue
            again = sum(len(row.job.prompt_ids) + row.state.count for row in live)
            together = min(budget, max(row.state.budget - row.state.count for row in live))
            young = max(row.state.count for row in live) <= self.limits.merge_steps
            if young and again <= min(self.limits.merge_tokens, MERGE_TOKENS_PER_STEP * together):
                return running
        return None

    def _start(self, jobs: list[Job], carried: list[_Row] | None = None) -> _Running | None:
        """Start a cohort for jobs, plus rows carried over from a cohort being merged."""
        carried = carried or []
        prompts = [row.job.prompt_ids + row.state.tokens for row in carried]
        prompts += [job.prompt_ids for job in jobs for _ in range(job.n)]
        budget = max([job.budget for job in jobs] + [r.state.budget - r.state.count for r in carried])
        sampling = (jobs or [r.job for r in carried])[0].sampling
        try:
            cohort = self.engine.start(prompts, sampling, budget)
        except Exception as exc:  # noqa: BLE001 - each job answers with the error
            log.exception("a cohort of %d sequences failed to start", len(prompts))
            with self._cond:
                self._busy -= len(prompts)
            for job in {id(j): j for j in [*jobs, *(r.job for r in carried)]}.values():
                job.sink(("error", None, exc))
            return None
        limit = getattr(cohort, "max_steps", budget)
        for row in carried:
            row.state.budget = min(row.state.budget, row.state.count + limit)
        rows = carried + [
            _Row(job, i, SequenceState(self.engine, min(job.budget, limit), job.stops, job.logprobs))
            for job in jobs
            for i in range(job.n)
        ]
        want = any(row.job.logprobs is not None for row in rows)
        running = _Running(cohort, rows, want, key=(jobs or [r.job for r in carried])[0].key())
        self._running.append(running)
        metrics.COHORTS_STARTED.inc()
        return running

    def _merge(self, young: _Running, jobs: list[Job]) -> None:
        """Restart a young cohort with new jobs in it: its sequences continue from their tokens.

        The sequences already running are prefilled again with what they have
        generated so far (at most merge_steps tokens each), so the cohort
        becomes one batch instead of two that would each read every weight
        on every step.
        """
        carried = [row for row in young.rows if not row.state.done]
        self._close(young)
        self._start(jobs, carried)
        metrics.COHORTS_MERGED.inc()

    def _advance(self, running: _Running) -> None:
        """One token for every sequence of the cohort; end the cohort when none is left."""
        now = time.monotonic()
        for row in running.rows:
            if row.state.done:
                continue
            if row.job.cancelled:
                self._end_row(row, "cancelled")
            elif row.job.deadline <= now:
                metrics.REJECTED.labels("timeout").inc()
                row.job.sink(("error", row.index, TimedOut("the request ran past its timeout")))
                self._end_row(row, "timeout")
        live = [row for row in running.rows if not row.state.done]
        if not live:
            self._close(running)
            return
        try:
            tokens, logits = running.cohort.step(running.want_logits)
        except Exception as exc:  # noqa: BLE001 - the cohort's jobs answer with the error
            log.exception("a cohort failed while decoding")
            self._finish(running, exc)
            return
        running.steps += 1
        metrics.BATCH_SIZE.observe(len(live))
        self._rate.append((time.monotonic(), len(live)))
        for i, row in enumerate(running.rows):
            if row.state.done:
                continue
            piece, entry = row.state.push(tokens[i], None if logits is None else logits[i])
            if piece or entry is not None:
                row.job.sink(("piece", row.index, piece, entry))
            if row.state.done:
                self._end_row(row, None)

    def _end_row(self, row: _Row, reason: str | None) -> None:
        """A sequence ended: tell its job (unless it failed) and free its slot."""
        if reason is None:
            row.job.sink(("end", row.index, row.state.result(len(row.job.prompt_ids))))
            self._durations.append(time.monotonic() - row.job.submitted)
        if not row.state.done:
            row.state.finish_reason = reason
        with self._cond:
            self._busy -= 1

    def _finish(self, running: _Running, exc: Exception) -> None:
        for row in running.rows:
            if not row.state.done:
                row.job.sink(("error", row.index, exc))
                row.state.finish_reason = "error"
                with self._cond:
                    self._busy -= 1
        self._close(running)

    def _close(self, running: _Running) -> None:
        running.cohort.close()
        if running in self._running:
            self._running.remove(running)

    def _publish(self, window_s: float = 5.0) -> None:
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - window_s:
            self._rate.popleft()
        metrics.TOKENS_PER_SECOND.set(sum(n for _, n in self._rate) / window_s)
        metrics.IN_FLIGHT.set(self._busy)
        metrics.QUEUE_DEPTH.set(len(self._waiting))


def logprob_entry(engine: Engine, entry: TokenLogprob, as_ids: bool = False) -> dict[str, Any]:
    """A TokenLogprob in OpenAI's chat shape (token text, logprob, bytes, top_logprobs), plus ids.

    as_ids: name tokens "token_id:N", as vLLM's `return_tokens_as_token_ids` does.
    """

    def one(token_id: int, logprob: float) -> dict[str, Any]:
        data = engine.token_bytes(token_id)
        return {
            "token": f"token_id:{token_id}" if as_ids else data.decode("utf-8", errors="replace"),
            "logprob": logprob,
            "bytes": list(data),
            "token_id": token_id,
        }

    return {
        **one(entry.token_id, entry.logprob),
        "top_logprobs": [one(i, lp) for i, lp in entry.top],
    }
