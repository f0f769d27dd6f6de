"""A pipeline run in flight when its service restarts is resumed, not failed.

The stage services are stand-ins (FakeStage answers Create/Get like a job
service, in memory); the job store, PipelineRuns and the runner are real.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from slmops.api.v1 import common_pb2, conversion_pb2, synthesis_pb2, training_pb2
from slmops.core.jobs.store import JobStore
from slmops.pipeline import stages as stages_module
from slmops.pipeline.service import KIND, PipelineRuns

DEFINITION = """
name: distill
stages:
  answers: {kind: synthesize, spec: {prompts_uri: /data/p.jsonl, endpoint: {base_url: "http://t/v1", model: big}}}
  student: {kind: train, dataset: answers, spec: {method: SFT_DISTILL, base: {model: m, from_config: true}}}
  int4: {kind: convert, model: student, spec: {precision: INT4}}
"""
JOBS = {"synthesis": synthesis_pb2.SynthesisJob, "training": training_pb2.TrainingJob,
        "conversion": conversion_pb2.ConversionJob}  # fmt: skip
SERVICE = {"answers": "synthesis", "student": "training", "int4": "conversion"}


class FakeStage:
    """One stage service: jobs it created, each finishing when the test says so."""

    ids = itertools.count(1)

    def __init__(self, stage: str):
        self.stage = stage
        self.noun = next(noun for service, noun, _ in stages_module.JOBS.values() if service == stage)
        self.created: list[str] = []
        self.checked: list[list[str]] = []
        self.states: dict[str, int] = {}

    def __getattr__(self, name: str):
        if name == f"Create{self.noun}":
            return self.create
        if name == f"Get{self.noun}":
            return self.get
        raise AttributeError(name)

    def create(self, request, timeout=None):
        if request.validate_only:  # the spec check before the run: nothing is created
            self.checked.append(list(request.pending_fields))
            return JOBS[self.stage](spec=request.spec)
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
    monkeypatch.setattr(stages_module.client, "stub", lambda stage: fakes[stage])
    monkeypatch.setattr(stages_module.client, "call", lambda method, request, **_: method(request))
    real_sleep = time.sleep
    monkeypatch.setattr(stages_module.time, "sleep", lambda s: real_sleep(0.01))
    return fakes


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.reliability(
    "the pipeline service restarts mid-run",
    expected="the run resumes; the stage in flight is re-attached, not rerun",
)
async def test_a_restarted_service_resumes_the_run_and_reattaches_the_stage_job(tmp_path, stages):
    db = f"sqlite:///{tmp_path}/pipeline.db"
    first = PipelineRuns(JobStore(db), poll_s=0.02)
    run = await first.create({"definition_yaml": DEFINITION})
    # Every stage was checked by its service first, the fields earlier stages fill left pending.
    assert stages["training"].checked == [["spec.dataset_uri"]] and stages["conversion"].checked == [
        ["spec.model_uri"]
    ]
    await until(lambda: stages["synthesis"].created)
    synth = stages["synthesis"].created[0]
    stages["synthesis"].states[synth] = common_pb2.SUCCEEDED
    await until(lambda: stages["training"].created or first.store.get(run.id).finished)
    assert not first.store.get(run.id).finished, first.store.get(run.id).reason
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
    assert [s["job_id"] for s in record.result["stages"]] == [
        synth,
        training_job,
        stages["conversion"].created[0],
    ]
    messages = [e.message for e in second.store.events(run.id)]
    assert "resumed after the pipeline service restarted" in messages
    assert any(m.startswith("answers: done before the restart") for m in messages)
    assert f"student: re-attached to {training_job}" in messages
    await second.close()


async def test_an_unchanged_rerun_reuses_every_stage_and_a_changed_one_reruns_from_it(
    tmp_path, stages, monkeypatch
):
    """Outputs are real sealed artifacts; a stage is reused only while its output still exists."""
    from slmops.core import artifacts

    def sealed(job_id: str) -> str:
        folder = tmp_path / "out" / job_id
        folder.mkdir(parents=True)
        (folder / "payload.txt").write_text(job_id)
        artifacts.finalize(f"file://{folder}", "dataset")
        return f"file://{folder}"

    for fake in stages.values():
        original = fake.get

        def get(request, timeout=None, fake=fake, original=original):
            fake.states[request.id] = common_pb2.SUCCEEDED  # every job finishes at once
            job = original(request)
            job.status.output.uri = (
                sealed(request.id)
                if not (tmp_path / "out" / request.id).exists()
                else f"file://{tmp_path / 'out' / request.id}"
            )
            return job

        monkeypatch.setattr(fake, "get", get, raising=False)
    runs = PipelineRuns(JobStore(f"sqlite:///{tmp_path}/p.db"), poll_s=0.02)

    async def run(definition: str) -> dict:
        record = await runs.create({"definition_yaml": definition})
        await until(lambda: runs.store.get(record.id).finished, timeout=10)
        return runs.store.get(record.id, KIND)

    first = await run(DEFINITION)
    assert first.state == "SUCCEEDED" and not any(s["reused"] for s in first.result["stages"])
    created = {name: list(fake.created) for name, fake in stages.items()}

    second = await run(DEFINITION)
    assert second.state == "SUCCEEDED" and all(s["reused"] for s in second.result["stages"])
    assert {name: list(fake.created) for name, fake in stages.items()} == created  # nothing ran
    assert [s["output"] for s in second.result["stages"]] == [s["output"] for s in first.result["stages"]]

    changed = await run(
        DEFINITION.replace("from_config: true", "from_config: true, config_overrides: {a: '1'}")
    )
    assert [s["reused"] for s in changed.result["stages"]] == [True, False, False]
    assert len(stages["synthesis"].created) == 1 and len(stages["training"].created) == 2
    assert len(stages["conversion"].created) == 2
    await runs.close()


@pytest.mark.reliability("a pipeline stage fails", expected="the next run retries that stage alone")
async def test_a_failed_stage_is_retried_alone_by_the_next_run(tmp_path, stages, monkeypatch):
    from slmops.core import artifacts

    failing = {"training": 1}  # the first training job fails

    for fake in stages.values():
        original = fake.get

        def get(request, timeout=None, fake=fake, original=original):
            if failing.get(fake.stage) and request.id == fake.created[0]:
                fake.states[request.id] = common_pb2.FAILED
            else:
                fake.states[request.id] = common_pb2.SUCCEEDED
            job = original(request)
            folder = tmp_path / "out" / request.id
            if job.status.state == common_pb2.SUCCEEDED and not folder.exists():
                folder.mkdir(parents=True)
                (folder / "x").write_text(request.id)
                artifacts.finalize(f"file://{folder}", "dataset")
            job.status.output.uri = f"file://{folder}"
            return job

        monkeypatch.setattr(fake, "get", get, raising=False)
    runs = PipelineRuns(JobStore(f"sqlite:///{tmp_path}/p.db"), poll_s=0.02)

    async def run() -> dict:
        record = await runs.create({"definition_yaml": DEFINITION})
        await until(lambda: runs.store.get(record.id).finished, timeout=10)
        return runs.store.get(record.id, KIND)

    first = await run()
    assert first.state == "FAILED" and first.result["stages"][-1]["name"] == "student"
    assert "FAILED" in first.reason
    second = await run()
    assert second.state == "SUCCEEDED"
    assert [s["reused"] for s in second.result["stages"]] == [True, False, False]
    assert len(stages["synthesis"].created) == 1 and len(stages["training"].created) == 2
    await runs.close()
