"""Two replicas of the synthesis service on one PostgreSQL database, with one Ray head.

The replicas are real service processes (`python -m slmops.synthesis`, each in
its own process group), sharing the work through owner leases (SLMOPS_LEASE_S
is short here, so a takeover does not take 30 s). The teacher is a stand-in
that answers slowly, so jobs are caught while they run. Ray is asked directly
how often each job was submitted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from slmops.api.v1 import common_pb2, synthesis_pb2, synthesis_pb2_grpc
from slmops.cli.stack import _start_service
from slmops.core import artifacts, settings
from slmops.core.jobs.local_ray import auth_env, free_port, start_head, stop_group
from slmops.testing.standin import StandinServer

pytestmark = pytest.mark.integration

LEASE_S = 3.0
FINISHED = {"SUCCEEDED", "FAILED", "CANCELLED"}


class Replica:
    """One synthesis service process and a stub to it."""

    def __init__(self, name: str, env: dict[str, str], logs: Path):
        folder = logs / name
        folder.mkdir(parents=True, exist_ok=True)
        self.name, self.dead = name, False
        self.started = _start_service("synthesis", free_port(), env, folder)
        self.channel = grpc.insecure_channel(self.started.address)
        self.stub = synthesis_pb2_grpc.SynthesisServiceStub(self.channel)

    def create(self, prompts_uri: str, teacher: StandinServer) -> str:
        spec = synthesis_pb2.SynthesisSpec(
            prompts_uri=prompts_uri,
            endpoint=synthesis_pb2.TeacherEndpoint(
                base_url=teacher.base_url, model="teacher", max_concurrency=1
            ),
            sampling=common_pb2.SamplingParams(max_tokens=8),
            num_shards=2,
        )
        return self.stub.CreateSynthesisJob(synthesis_pb2.CreateSynthesisJobRequest(spec=spec), timeout=30).id

    def get(self, job_id: str) -> synthesis_pb2.SynthesisJob:
        return self.stub.GetSynthesisJob(common_pb2.GetJobRequest(id=job_id), timeout=10)

    def state(self, job_id: str) -> str:
        return common_pb2.JobState.Name(self.get(job_id).status.state)

    def ids(self) -> list[str]:
        return [
            job.id
            for job in self.stub.ListSynthesisJobs(common_pb2.ListJobsRequest(page_size=500), timeout=10).jobs
        ]

    def kill(self) -> None:
        os.killpg(self.started.pid, signal.SIGKILL)
        os.waitpid(self.started.pid, 0)  # this process started it: reap it
        self.dead = True

    def stop(self) -> None:
        self.channel.close()
        if not self.dead:
            stop_group(self.started.pid, 10.0)


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory) -> Iterator[dict]:
    """A Ray head, a PostgreSQL database and the environment of the replicas; replicas started by `replicas`."""
    data_dir = tmp_path_factory.mktemp("replicas")
    saved = dict(os.environ)
    head = start_head(data_dir, num_cpus=2)
    env = dict(os.environ, SLMOPS_DATA_DIR=str(data_dir), RAY_ADDRESS=head.address, PYTHONUNBUFFERED="1",
               SLMOPS_DATABASE_URL=postgres.database("t_replicas"), SLMOPS_LEASE_S=str(LEASE_S),
               SLMOPS_JOB_POLL_S="0.3", **auth_env(data_dir))  # fmt: skip
    env.pop(settings.VARS["auth_token_file"].env, None)
    os.environ.update(
        {k: env[k] for k in ("SLMOPS_DATA_DIR", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    )
    started: list[Replica] = []
    try:
        yield {"data_dir": data_dir, "env": env, "head": head, "started": started}
    finally:
        for replica in started:
            replica.stop()
        head.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def replicas(cluster) -> list[Replica]:
    """Two live replicas (started again where a test killed one)."""
    live = [r for r in cluster["started"] if not r.dead]
    for name in ("a", "b", "c", "d")[len(live) :][: 2 - len(live)]:
        replica = Replica(f"{name}-{len(cluster['started'])}", cluster["env"], cluster["data_dir"] / "logs")
        cluster["started"].append(replica)
        live.append(replica)
    return live[:2]


def _prompts(folder: Path, count: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n" for i in range(count))
    )
    return artifacts.to_uri(path)


def _submissions(cluster: dict) -> Counter[str]:
    """How often Ray was given each job: submissions per slmops job id (restarts counted apart)."""
    from ray.job_submission import JobSubmissionClient

    # This head's token, sent explicitly: Ray caches the token a process loaded first (another stack's, when
    # the session's stack ran before this module), whatever RAY_AUTH_TOKEN_PATH says now.
    token = Path(cluster["env"]["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    jobs = JobSubmissionClient(
        cluster["head"].address, headers={"authorization": f"Bearer {token}"}
    ).list_jobs()
    return Counter(j.submission_id for j in jobs if (j.submission_id or "").startswith("slmops-"))


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except grpc.RpcError:
            pass  # a replica reconnecting
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f}s")


def _watch(replica: Replica, job_id: str) -> list[common_pb2.ProgressEvent]:
    return list(replica.stub.WatchSynthesisJob(common_pb2.WatchJobRequest(id=job_id), timeout=90))


@pytest.mark.reliability(
    "two replicas take the same Create at once", expected="one record, one Ray submission"
)
def test_creates_from_both_replicas_at_once_are_recorded_and_submitted_once(cluster, replicas):
    prompts = _prompts(cluster["data_dir"] / "inputs-creates", 4)
    with StandinServer(delay_s=0.05) as teacher, ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: replicas[i % 2].create(prompts, teacher), range(4)))
        assert len(set(ids)) == 4
        for replica in replicas:  # each replica lists each job once
            listed = Counter(replica.ids())
            assert all(listed[i] == 1 for i in ids)
        _until(lambda: all(replicas[0].state(i) in FINISHED for i in ids), 90, "every job ended")
    assert {replicas[1].state(i) for i in ids} == {"SUCCEEDED"}
    submitted = _submissions(cluster)
    assert [submitted[f"slmops-{i}"] for i in ids] == [1] * 4
    assert not any(s.startswith(tuple(f"slmops-{i}-r" for i in ids)) for s in submitted)


@pytest.mark.reliability(
    "a service replica is killed (SIGKILL) with jobs in flight",
    expected="the other replica takes them over; each runs once",
)
def test_a_killed_replica_s_jobs_are_taken_over_and_each_runs_once(cluster, replicas):
    doomed, survivor = replicas
    prompts = _prompts(cluster["data_dir"] / "inputs-takeover", 8)
    with StandinServer(delay_s=0.6) as teacher:
        ids = [doomed.create(prompts, teacher) for _ in range(2)]
        _until(lambda: all(doomed.state(i) == "RUNNING" for i in ids), 60, "the jobs ran")
        doomed.kill()  # no lease released: the survivor waits for them to expire
        with ThreadPoolExecutor(2) as pool:
            watched = list(pool.map(lambda i: _watch(survivor, i), ids))
    for job_id, events in zip(ids, watched, strict=True):
        job = survivor.get(job_id)
        state = common_pb2.JobState.Name(job.status.state)
        assert state == "SUCCEEDED" or (state == "FAILED" and job.status.reason), (job_id, state)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert common_pb2.JobState.Name(events[-1].state) == state
    submitted = _submissions(cluster)
    assert [submitted[f"slmops-{i}"] for i in ids] == [1, 1]
    said = Path(survivor.started.log).read_text(errors="replace")
    assert all(f"{i}: following it (owner" in said for i in ids)  # taken over, not created there


@pytest.mark.reliability(
    "PostgreSQL restarts under two replicas", expected="they reconnect; the job completes"
)
def test_the_replicas_reconnect_after_a_postgres_restart_and_the_job_completes(cluster, replicas, postgres):
    prompts = _prompts(cluster["data_dir"] / "inputs-restart", 6)
    with StandinServer(delay_s=0.5) as teacher:
        job_id = replicas[0].create(prompts, teacher)
        _until(lambda: replicas[0].state(job_id) == "RUNNING", 60, "the job ran")
        postgres.stop()
        time.sleep(1.5)  # the replicas' polls and sweeps meet a dead database
        postgres.start()
        _until(lambda: replicas[1].state(job_id) in FINISHED, 90, "the job ended")
        assert replicas[0].state(job_id) == "SUCCEEDED"
        events = _watch(replicas[1], job_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        again = replicas[1].create(prompts, teacher)  # both replicas still record and follow new work
        _until(lambda: replicas[0].state(again) in FINISHED, 90, "the next job ended")
        assert replicas[0].state(again) == "SUCCEEDED"
    said = "".join(Path(r.started.log).read_text(errors="replace") for r in replicas)
    assert "the job store is unreachable" in said  # the outage was met, and ridden over
