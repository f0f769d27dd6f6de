"""Synthesis jobs through the running stack: Cancel keeps what was answered, and a job whose
process is killed is started again and buys nothing twice.

The stack is the real local one (`slmops up`: a Ray head and the services);
the teacher is `StandinServer`, a local OpenAI-compatible server standing in
for a remote paid one, slowed down so that a job is caught mid-way. Requests
are counted at the server.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from slmops.api.v1 import common_pb2, synthesis_pb2
from slmops.cli import client
from slmops.cli.main import main as cli_main
from slmops.core import artifacts, settings
from slmops.core.datasets import read_split
from slmops.testing.standin import StandinServer

pytestmark = pytest.mark.integration

NUM_PROMPTS = 48


def _prompts(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                            for i in range(NUM_PROMPTS)))  # fmt: skip
    return artifacts.to_uri(path)


def _create(prompts_uri: str, teacher: StandinServer) -> synthesis_pb2.SynthesisJob:
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=prompts_uri,
        endpoint=synthesis_pb2.TeacherEndpoint(base_url=teacher.base_url, model="teacher", max_concurrency=2),
        sampling=common_pb2.SamplingParams(max_tokens=8),
        num_shards=12,  # four prompts a shard
    )
    stub = client.stub("synthesis")
    return client.call(stub.CreateSynthesisJob, synthesis_pb2.CreateSynthesisJobRequest(spec=spec))


def _until_answered(job_id: str, shards: int) -> None:
    """Watch the job until `shards` shards have been answered (and committed)."""
    stub = client.stub("synthesis")
    seen = 0
    for event in stub.WatchSynthesisJob(common_pb2.WatchJobRequest(id=job_id)):
        seen += event.message.startswith("shard ")
        if seen >= shards:
            return
    raise AssertionError(f"job {job_id} ended before {shards} shards were answered")


def _get(job_id: str) -> synthesis_pb2.SynthesisJob:
    return client.call(client.stub("synthesis").GetSynthesisJob, common_pb2.GetJobRequest(id=job_id))


def _committed(output_uri: str) -> set[str]:
    """The prompts of the answers committed beside a dataset folder that is not sealed yet."""
    out = artifacts.local_path(output_uri)
    parts = out.parent / f".{out.name}.parts"
    prompts = set()
    for part in parts.glob("part-*.jsonl"):
        for line in part.read_text().splitlines():
            prompts.add(f"{json.loads(line)['index']}+{json.loads(line)['index']}=")
    return prompts


@pytest.mark.reliability(
    "a synthesis job is cancelled midway",
    expected="it stops within seconds; answered prompts kept as a sealed dataset",
)
def test_cancel_stops_within_seconds_and_keeps_the_answered_prompts_as_a_sealed_dataset(stack):
    prompts_uri = _prompts(stack["data_dir"] / "inputs-cancel")
    with StandinServer(delay_s=0.4) as teacher:
        job = _create(prompts_uri, teacher)
        _until_answered(job.id, 2)
        started = time.monotonic()
        assert cli_main(["cancel", job.id]) == 0  # as an operator would
        took = time.monotonic() - started
        asked = len(teacher.requests)
    assert _get(job.id).status.state == common_pb2.CANCELLED
    assert took < 15, f"Cancel took {took:.1f}s"
    output_uri = _get(job.id).status.output.uri
    assert output_uri and artifacts.is_artifact(output_uri)  # sealed on the way out, before Cancel answered
    manifest = artifacts.read_manifest(output_uri)
    stats = json.loads((artifacts.local_path(output_uri) / "stats.json").read_text())
    assert stats["complete"] is False and 8 <= stats["answered"] < NUM_PROMPTS
    assert stats["answered"] + stats["not_asked"] == NUM_PROMPTS == manifest.metrics["num_prompts"]
    records = read_split(output_uri, "train") + read_split(output_uri)
    assert len(records) == stats["answered"] and all(r["completion"] == r["answer"] for r in records)
    assert stats["answered"] <= asked < NUM_PROMPTS  # it stopped asking


def _driver(job_id: str) -> psutil.Process:
    """The process of the job's Ray driver (`python -m slmops.core.jobs.entry synthesis`)."""
    for process in psutil.process_iter(["cmdline"]):
        args = process.info["cmdline"] or []
        try:  # the interpreter itself, not the shell Ray may start it from
            if "-m" in args[:-1] and args[args.index("-m") + 1] == "slmops.core.jobs.entry" and \
                    process.environ().get("SLMOPS_JOB_ID") == job_id:  # fmt: skip
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no driver process for {job_id}")


@pytest.mark.reliability(
    "the process of a synthesis job is killed", expected="started again; asks only for what was not committed"
)
def test_a_job_whose_process_is_killed_is_started_again_and_asks_only_for_what_was_not_committed(stack):
    prompts_uri = _prompts(stack["data_dir"] / "inputs-kill")
    with StandinServer(delay_s=0.3) as teacher:
        job = _create(prompts_uri, teacher)
        _until_answered(job.id, 3)
        driver = _driver(job.id)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        committed = _committed(f"{settings.artifact_root().rstrip('/')}/datasets/{job.id}")
        killed_at = len(teacher.requests)
        deadline = time.monotonic() + 240
        while (done := _get(job.id)).status.state not in (common_pb2.SUCCEEDED, common_pb2.FAILED,
                                                          common_pb2.CANCELLED):  # fmt: skip
            assert time.monotonic() < deadline, "the restarted job did not finish"
            time.sleep(0.5)
        after = [r["body"]["prompt"] for r in teacher.requests[killed_at:]]
    assert done.status.state == common_pb2.SUCCEEDED, done.status.reason
    assert 12 <= len(committed) < NUM_PROMPTS
    assert not committed & set(after)  # nothing committed was bought twice
    asked = Counter(r["body"]["prompt"] for r in teacher.requests)
    assert set(asked) == {f"{i}+{i}=" for i in range(NUM_PROMPTS)}
    records = read_split(done.status.output.uri, "train") + read_split(done.status.output.uri)
    assert sorted(r["prompt"] for r in records) == sorted(asked)  # each prompt once in the dataset
    events = [
        e.message for e in client.stub("synthesis").WatchSynthesisJob(common_pb2.WatchJobRequest(id=job.id))
    ]
    assert any("started it again (1 of 2 restarts)" in m for m in events)
    assert any(m.startswith(f"resuming: {len(committed)} of {NUM_PROMPTS}") for m in events)
