"""A pipeline run in flight when its service restarts is resumed, not failed.

The stage services are stand-ins (FakeStage answers Create/Get like a job
service, in memory); the job store, PipelineRuns and the runner are real.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from slmops.api.v1 import common_pb2, conversion_pb2, synthesis_pb2, training_pb2
from slmops.core.jobstore import JobStore
from slmops.pipeline import runner as runner_module
from slmops.pipeline.service import KIND, PipelineRuns

DEFINITION = """
name: distill
synthesis: {prompts_uri: /data/p.jsonl, endpoint: {base_url: "http://t/v1", model: big}}
training: {method: SFT_DISTILL, base: {model: m, from_config: true}}
conversion: {precision: INT4}
"""
JOBS = {"synthesis": synthesis_pb2.SynthesisJob, "training": training_pb2.TrainingJob,
        "conversion": conversion_pb2.ConversionJob}  # fmt: skip


class FakeStage:
    """One stage service: jobs it created, each finishing when the test says so."""

    ids = itertools.count(1)

    def __init__(self, stage: str):
        self.stage, self.noun = stage, runner_module._JOB_STAGES[stage][0]
        self.created: list[str] = []
        self.states: dict[str, int] = {}

    def __getattr__(self, name: str):
        if name == f"Create{self.noun}":
            return self.create
        if name == f"Get{self.noun}":
            return self.get
        raise AttributeError(name)

    def create(self, request, timeout=None):
        job_id = f"{self.stage[:5]}-{next(self.ids)}"
        self.created.append(job_id)
        self.states[job_id] = common_pb2.RUNNING
        return self.get(common_pb2.GetJobRequest(id=job_id))

    def get(self, request, timeout=None):
        job = JOBS[self.stage](id=request.id)
        job.status.state = self.states[request.id]
        if job.status.state == common_pb2.SUCCEEDED:
            job.status.output.uri = f"file:///out/{request.id}"
        return job


@pytest.fixture
def stages(monkeypatch):
    fakes = {name: FakeStage(name) for name in JOBS}
    monkeypatch.setattr(runner_module.client, "stub", lambda stage: fakes[stage])
    monkeypatch.setattr(runner_module.client, "call", lambda method, request, **_: method(request))
    real_sleep = asyncio.sleep
    monkeypatch.setattr(runner_module.asyncio, "sleep", lambda s: real_sleep(0.01))
    return fakes


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_a_restarted_service_resumes_the_run_and_reattaches_the_stage_job(tmp_path, stages):
    db = f"sqlite:///{tmp_path}/pipeline.db"
    first = PipelineRuns(JobStore(db), poll_s=0.02)
    run = await first.create({"definition_yaml": DEFINITION})
    await until(lambda: stages["synthesis"].created)
    synth = stages["synthesis"].created[0]
    stages["synthesis"].states[synth] = common_pb2.SUCCEEDED
    await until(lambda: stages["training"].created)
    training_job = stages["training"].created[0]
    await first.close()  # the service stops with training in flight
    await asyncio.sleep(0.05)

    second = PipelineRuns(JobStore(db), poll_s=0.02)
    second.resume()
    await until(lambda: second.store.get(run.id).owner == second.owner)
    stages["training"].states[training_job] = common_pb2.SUCCEEDED
    await until(lambda: stages["conversion"].created)
    stages["conversion"].states[stages["conversion"].created[0]] = common_pb2.SUCCEEDED
    await until(lambda: second.store.get(run.id).finished)

    record = second.store.get(run.id, KIND)
    assert record.state == "SUCCEEDED"
    assert stages["synthesis"].created == [synth] and stages["training"].created == [training_job]
    assert [s["job_id"] for s in record.result["stages"]] == [synth, training_job, stages["conversion"].created[0]]
    messages = [e.message for e in second.store.events(run.id)]
    assert "resumed after the pipeline service restarted" in messages
    assert any(m.startswith("synthesis: done before the restart") for m in messages)
    assert f"training: re-attached to {training_job}" in messages
    await second.close()
