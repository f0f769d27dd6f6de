"""The stage job lifecycle in process: submit, follow, cancel, restart, two replicas on one database.

Ray is a stand-in here (FakeRay: a cluster's job table in memory, shared by
the replicas as one cluster would be); the job store and StageJobs are real,
and every test runs on a SQLite file and on PostgreSQL (`store_url`). One
restarts PostgreSQL under a running job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from slmops.core.errors import Unavailable
from slmops.core.jobs.lifecycle import Update
from slmops.core.jobs.ray_jobs import RayJobs, RayJobStatus
from slmops.core.jobs.stage import MAX_TAIL_BREAKS, StageJobs
from slmops.core.jobs.store import JobRecord, JobStore, LeaseLost
from slmops.core.progress import PREFIX, RESULT_PREFIX


class FakeRay:
    """Ray's job table: each submission has a state and a log; `fail_polls` makes status calls fail,
    `break_tails` makes that many log streams break off, `tail_lag` delays what a stream delivers."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.submits: Counter[str] = Counter()
        self.stops: list[str] = []
        self.fail_polls = 0
        self.stoppable = True
        self.break_tails = 0
        self.tail_lag = 0.0
        self.stop_lag = 0.0  # how long a signalled job takes to end
        self.tails_opened = 0
        self.log_reads = 0

    def submit(self, stage, job_id, config, output_uri, traceparent="", restart=0) -> str:
        submission = f"slmops-{job_id}" + (f"-r{restart}" if restart else "")
        assert submission not in self.jobs, f"{submission} submitted twice"  # Ray refuses a second one
        self.submits[job_id] += 1
        self.jobs[submission] = {"state": "PENDING", "log": ""}
        return submission

    def find(self, stage, job_id) -> str:
        return f"slmops-{job_id}" if f"slmops-{job_id}" in self.jobs else ""

    def status(self, submission: str) -> RayJobStatus:
        if self.fail_polls:
            self.fail_polls -= 1
            raise Unavailable("Ray Jobs API at http://ray:8265 timed out")
        return RayJobStatus(self.jobs[submission]["state"], "")

    def logs(self, submission: str) -> str:
        self.log_reads += 1
        return self.jobs[submission]["log"]

    async def tail(self, submission: str) -> AsyncIterator[str]:
        """The log as it grows, from its start; it ends once the job has ended, as Ray's stream does."""
        self.tails_opened += 1
        if self.break_tails:
            self.break_tails -= 1
            raise Unavailable(f"Ray job {submission} log stream broke off: connection reset")
        sent = 0
        while True:
            job = self.jobs[submission]
            ended, text = job["state"] not in ("PENDING", "RUNNING"), job["log"]
            if len(text) > sent:
                await asyncio.sleep(self.tail_lag)
                yield text[sent:]
                sent = len(text)
            if ended:
                return
            await asyncio.sleep(0.01)

    def stop(self, submission: str) -> bool:
        self.stops.append(submission)
        if not self.stoppable:
            return False
        if self.stop_lag:
            threading.Timer(self.stop_lag, self.jobs[submission].update, kwargs={"state": "STOPPED"}).start()
        else:
            self.jobs[submission]["state"] = "STOPPED"
        return True

    def advance(self, submission: str, state: str, *lines: str) -> None:
        self.jobs[submission]["state"] = state
        self.jobs[submission]["log"] += "".join(line + "\n" for line in lines)


def progress_line(fraction: float, message: str) -> str:
    return PREFIX + json.dumps({"fraction": fraction, "message": message, "metrics": {}})


def result_line(output: str) -> str:
    return RESULT_PREFIX + json.dumps({"output_uri": output, "metrics": {"loss": 0.5}})


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def replica(db: str, ray: FakeRay, name: str, lease_s: float = 0.6) -> StageJobs:
    return StageJobs("training", JobStore(db), ray, poll_s=0.02, lease_s=lease_s, owner=name)


@pytest.fixture
def db(store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    return store_url


async def test_a_job_is_submitted_once_followed_and_watched_to_the_end(db):
    ray = FakeRay()
    jobs = replica(db, ray, "a")
    record = await jobs.create({"x": 1}, {}, "", {"team": "nlp"})
    await until(lambda: ray.submits[record.id] == 1)
    submission = f"slmops-{record.id}"
    watched: list[str] = []

    async def watch() -> None:
        async for event in jobs.watch(record.id):
            watched.append(f"{event.state}:{event.message}")

    watcher = asyncio.create_task(watch())
    ray.advance(submission, "RUNNING", progress_line(0.5, "half way"))
    await until(lambda: any("half way" in w for w in watched))
    ray.advance(submission, "SUCCEEDED", result_line("file:///out"))
    await asyncio.wait_for(watcher, 5)
    assert watched[0] == "PENDING:queued" and watched[-1] == "SUCCEEDED:done"
    done = jobs.get(record.id)
    assert (done.state, done.output_uri, done.owner) == ("SUCCEEDED", "file:///out", "")  # lease released
    assert [r.id for r in jobs.list("SUCCEEDED", {"team": "nlp"}, 0, "")[0]] == [record.id]
    assert jobs.list(None, {"team": "cv"}, 0, "")[0] == []
    # The log was streamed while the job ran; at its end it is read whole at most once.
    assert ray.tails_opened == 1 and ray.log_reads <= 1
    await jobs.close()


async def test_a_log_stream_that_breaks_off_is_opened_again_and_the_log_read_whole_meanwhile(db):
    ray = FakeRay()
    ray.break_tails = 1
    jobs = replica(db, ray, "a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    submission = f"slmops-{record.id}"
    ray.advance(submission, "RUNNING", progress_line(0.3, "working"))
    await until(lambda: ray.tails_opened == 2)
    ray.advance(submission, "SUCCEEDED", progress_line(0.9, "almost"), result_line("file:///out"))
    await until(lambda: jobs.get(record.id).finished)
    done = jobs.get(record.id)
    assert (done.state, done.output_uri) == ("SUCCEEDED", "file:///out")
    assert ray.log_reads >= 1
    messages = [e.message for e in jobs.store.events(record.id)]
    assert messages.count("working") == 1 and messages.count("almost") == 1
    await jobs.close()


async def test_a_job_whose_log_streams_keep_breaking_is_followed_by_reading_its_log(db):
    ray = FakeRay()
    ray.break_tails = 100
    jobs = replica(db, ray, "a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    ray.advance(f"slmops-{record.id}", "RUNNING", progress_line(0.3, "working"))
    await until(lambda: ray.log_reads >= MAX_TAIL_BREAKS + 2)
    assert ray.tails_opened == MAX_TAIL_BREAKS  # a bounded number of tries
    ray.advance(f"slmops-{record.id}", "SUCCEEDED", result_line("file:///out"))
    await until(lambda: jobs.get(record.id).finished)
    assert jobs.get(record.id).output_uri == "file:///out"
    assert [e.message for e in jobs.store.events(record.id)].count("working") == 1
    await jobs.close()


async def test_the_last_lines_of_an_ended_job_come_from_its_whole_log_read_once(db):
    ray = FakeRay()
    ray.tail_lag = 0.3  # the stream delivers the result line well after Ray reports the job's end
    jobs = replica(db, ray, "a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    ray.advance(f"slmops-{record.id}", "SUCCEEDED", progress_line(0.9, "almost"), result_line("file:///out"))
    await until(lambda: jobs.get(record.id).finished)
    done = jobs.get(record.id)
    assert (done.state, done.output_uri) == ("SUCCEEDED", "file:///out")
    assert ray.log_reads == 1  # not waited for: a poll that waits holds the job's lease
    assert [e.message for e in jobs.store.events(record.id)].count("almost") == 1
    await jobs.close()


async def test_a_failed_status_poll_is_retried_not_taken_as_failure(db):
    ray = FakeRay()
    jobs = replica(db, ray, "a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    ray.fail_polls = 3
    ray.advance(f"slmops-{record.id}", "SUCCEEDED", result_line("file:///out"))
    await until(lambda: jobs.get(record.id).finished)
    assert jobs.get(record.id).state == "SUCCEEDED" and ray.fail_polls == 0
    await jobs.close()


async def test_cancel_reports_cancelled_only_when_ray_stopped_the_work(db):
    ray = FakeRay()
    jobs = replica(db, ray, "a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    ray.advance(f"slmops-{record.id}", "RUNNING")
    ray.stoppable = False
    with pytest.raises(Unavailable, match="could not stop"):
        await jobs.cancel(record.id)
    assert not jobs.get(record.id).finished
    ray.stoppable = True
    cancelled = await jobs.cancel(record.id)
    assert cancelled.state == "CANCELLED" and ray.stops == [f"slmops-{record.id}"] * 2
    await jobs.close()


async def test_cancel_waits_for_a_signalled_job_to_end(db):
    ray = FakeRay()
    ray.stop_lag = 0.5
    jobs = replica(db, ray, "a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    ray.advance(f"slmops-{record.id}", "RUNNING")
    cancelled = await jobs.cancel(record.id)
    assert cancelled.state == "CANCELLED"
    assert ray.jobs[f"slmops-{record.id}"]["state"] == "STOPPED"  # it had ended when Cancel answered
    await jobs.close()


@pytest.mark.reliability(
    "the service dies between Ray submit and record",
    expected="the Ray job is found again, not submitted twice",
)
async def test_a_restart_between_submit_and_record_finds_the_ray_job_again(db):
    ray = FakeRay()
    store = JobStore(db)
    store.create(JobRecord(id="train-abc", kind="training", config={}, message="queued"))
    ray.submit("training", "train-abc", {}, "")  # submitted, then the service died before recording it
    ray.advance("slmops-train-abc", "SUCCEEDED", result_line("file:///out"))
    jobs = replica(db, ray, "b")
    jobs.resume()
    await until(lambda: jobs.get("train-abc").finished)
    assert jobs.get("train-abc").state == "SUCCEEDED"
    assert jobs.get("train-abc").ray_job_id == "slmops-train-abc"
    assert ray.submits["train-abc"] == 1  # never paid for twice
    await jobs.close()


@pytest.mark.reliability("a replica dies holding jobs", expected="another takes over")
async def test_two_replicas_share_the_jobs_and_one_takes_over_from_a_dead_one(db):
    ray = FakeRay()
    a, b = replica(db, ray, "a"), replica(db, ray, "b")
    ids = [(await a.create({}, {}, "", {})).id for _ in range(3)]
    ids += [(await b.create({}, {}, "", {})).id for _ in range(3)]
    a.resume()
    b.resume()
    await until(lambda: all(ray.submits[i] == 1 for i in ids))
    owners = {i: a.store.get(i).owner for i in ids}
    assert set(owners.values()) == {"a", "b"}
    for i in ids:
        ray.advance(f"slmops-{i}", "RUNNING", progress_line(0.3, "working"))

    # Replica a dies: its tasks stop, its leases are not released, and b takes its jobs when they expire.
    for task in [a._sweeper, *a._tasks.values()]:
        task.cancel()
    orphaned = [i for i, owner in owners.items() if owner == "a"]
    await until(lambda: all(b.store.get(i).owner == "b" for i in orphaned), timeout=10)
    for i in ids:
        ray.advance(f"slmops-{i}", "SUCCEEDED", progress_line(0.9, "almost"), result_line(f"file:///{i}"))
    await until(lambda: all(b.get(i).state == "SUCCEEDED" for i in ids))

    assert all(ray.submits[i] == 1 for i in ids)  # each job submitted exactly once
    for i in ids:
        events = b.store.events(i)
        sequences = [e.sequence for e in events]
        assert sequences == list(range(1, len(events) + 1))  # unique, gapless
        messages = [e.message for e in events]
        assert messages.count("working") == 1 and messages.count("almost") == 1  # no line reported twice
    await b.close()


async def test_a_synthesis_job_whose_process_died_is_started_again_a_bounded_number_of_times(db):
    ray = FakeRay()
    jobs = StageJobs("synthesis", JobStore(db), ray, poll_s=0.02, lease_s=0.6, owner="a")
    record = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    first = f"slmops-{record.id}"
    ray.advance(first, "FAILED", progress_line(0.4, "shard 2 answered"))  # killed: no SLMOPS_ERROR line
    await until(lambda: ray.submits[record.id] == 2)
    await until(lambda: any("started it again (1 of 2" in e.message for e in jobs.store.events(record.id, 0)))
    assert jobs.get(record.id).ray_job_id == f"{first}-r1"
    # The restarted job's own log is read from its start.
    ray.advance(f"{first}-r1", "SUCCEEDED", progress_line(0.9, "resuming"), result_line("file:///out"))
    await until(lambda: jobs.get(record.id).finished)
    assert jobs.get(record.id).state == "SUCCEEDED"

    # A job that says why it failed is not restarted; nor is one restarted twice already.
    told = await jobs.create({}, {}, "", {})
    await until(lambda: ray.submits[told.id] == 1)
    ray.advance(f"slmops-{told.id}", "FAILED", "SLMOPS_ERROR Unavailable: the teacher cannot be reached")
    await until(lambda: jobs.get(told.id).finished)
    assert ray.submits[told.id] == 1 and "cannot be reached" in jobs.get(told.id).reason
    dies = await jobs.create({}, {}, "", {})
    for submission in (f"slmops-{dies.id}", f"slmops-{dies.id}-r1", f"slmops-{dies.id}-r2"):
        await until(lambda s=submission: s in ray.jobs and jobs.get(dies.id).ray_job_id == s)
        ray.advance(submission, "FAILED")
    await until(lambda: jobs.get(dies.id).finished)
    assert ray.submits[dies.id] == 3 and "after 2 restarts" in jobs.get(dies.id).reason
    await jobs.close()


@pytest.mark.reliability(
    "the lease of a replica runs out", expected="it cannot finish the job; another follows it"
)
async def test_a_replica_whose_lease_ran_out_cannot_finish_the_job_another_follows(db):
    ray = FakeRay()
    a, b = (
        replica(db, ray, "a", lease_s=0.3),
        replica(db, ray, "b", lease_s=2.0),
    )  # b renews with room to spare
    record = await a.create({}, {}, "", {})
    await until(lambda: ray.submits[record.id] == 1)
    ray.advance(f"slmops-{record.id}", "RUNNING", progress_line(0.3, "working"))
    await until(lambda: a.get(record.id).state == "RUNNING")
    for task in list(a._tasks.values()):  # a stalls (a long pause, a partition): its lease runs out
        task.cancel()
    await asyncio.sleep(0.4)
    b.resume()
    await until(lambda: b.store.get(record.id).owner == "b")

    # What a saw before it stalled arrives late: it may neither fail the job nor finish it.
    stale = a.get(record.id)
    with pytest.raises(LeaseLost):
        await asyncio.to_thread(a._apply, stale, Update(state="FAILED", reason="stale news"))
    await a._fail(record.id, "a's view of an error")  # logged, not kept
    assert not a.get(record.id).finished and a.get(record.id).owner == "b"

    # A user's Cancel, through any replica, still finishes it.
    cancelled = await a.cancel(record.id)
    assert cancelled.state == "CANCELLED" and "stale" not in cancelled.reason
    assert [e.state for e in a.store.events(record.id)].count("CANCELLED") == 1
    await b.close()
    await a.close()


async def test_a_second_submission_of_the_same_job_follows_the_first(monkeypatch):
    """Two replicas may both submit a job (one lost its lease mid-submit): Ray refuses the second
    submission id, and that replica follows the job Ray runs, rather than failing it."""

    class Client:
        def __init__(self) -> None:
            self.submitted: list[str] = []

        def submit_job(self, *, submission_id, **_):
            if submission_id in self.submitted:
                raise RuntimeError(f"Request failed with status code 400: Job with submission_id {submission_id} "
                                   "already exists. Please use a different submission_id.")  # fmt: skip
            self.submitted.append(submission_id)
            return submission_id

    ray = RayJobs("http://127.0.0.1:1")
    ray._client = Client()
    assert ray.submit("training", "train-x", {}, "file:///out") == "slmops-train-x"
    assert ray.submit("training", "train-x", {}, "file:///out") == "slmops-train-x"
    assert ray._client.submitted == ["slmops-train-x"]


@pytest.mark.reliability("PostgreSQL restarts under a running job", expected="the job keeps going")
async def test_a_job_keeps_going_through_a_postgres_restart(postgres, tmp_path, monkeypatch, caplog):
    """PostgreSQL restarts while a job runs: the follower waits, reconnects, and the job ends SUCCEEDED
    with every event kept once, numbered 1..n."""
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    url = postgres.database("t_lifecycle_restart")
    ray = FakeRay()
    jobs = StageJobs("training", JobStore(url), ray, poll_s=0.05, lease_s=3.0, owner="a")
    record = await jobs.create({}, {}, "", {})
    submission = f"slmops-{record.id}"
    await until(lambda: ray.submits[record.id] == 1)
    ray.advance(submission, "RUNNING", progress_line(0.3, "before"))
    await until(lambda: any(e.message == "before" for e in jobs.store.events(record.id)))

    caplog.set_level(logging.WARNING, "slmops.core.jobs.lifecycle")
    try:
        await asyncio.to_thread(postgres.stop)
        ray.advance(submission, "RUNNING", progress_line(0.6, "during"))
        await until(lambda: "job store is unreachable" in caplog.text, timeout=10)
    finally:
        await asyncio.to_thread(postgres.start)
    ray.advance(submission, "SUCCEEDED", progress_line(0.9, "after"), result_line("file:///out"))
    await until(lambda: jobs.get(record.id).finished, timeout=20)

    done = jobs.get(record.id)
    assert done.state == "SUCCEEDED" and ray.submits[record.id] == 1
    events = jobs.store.events(record.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    messages = [e.message for e in events]
    assert [messages.count(m) for m in ("before", "during", "after", "done")] == [1, 1, 1, 1]
    await jobs.close()
    jobs.store.engine.dispose()
