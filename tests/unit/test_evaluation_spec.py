"""Validation of EvaluationSpec: defaults, and every problem reported at once by proto path."""

from __future__ import annotations

import json

import grpc
import pytest

from slmops.api.v1 import common_pb2, evaluation_pb2, evaluation_pb2_grpc
from slmops.core.errors import InvalidSpec
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.evaluation import job
from slmops.evaluation.config import EvaluationConfig
from slmops.evaluation.service import registration
from slmops.evaluation.spec import from_proto
from tests.unit._fakes import FakeRay


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLMOPS_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("SLMOPS_ARTIFACT_ROOT", raising=False)
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    return path


def _problems(spec) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    return {field: problem for field, problem in info.value.problems}


def test_defaults(dataset):
    spec = evaluation_pb2.EvaluationSpec(
        targets=[
            evaluation_pb2.EvalTarget(name="teacher", base_url="http://127.0.0.1:8000/v1/"),
            evaluation_pb2.EvalTarget(name="student", deployment="student-int4"),
        ],
        dataset_uri=str(dataset),
    )
    config = from_proto(spec)
    assert config.reference == "teacher"  # empty means the first target
    assert config.metric == "exact_match" and config.concurrency == 1 and config.warmup_requests == 2
    assert config.sampling.max_tokens == 64 and config.gate is None
    assert config.targets[0].base_url == "http://127.0.0.1:8000/v1"
    # A deployment target: its base URL is filled in by the service; model defaults to the deployment.
    assert config.target("student").base_url == "" and config.target("student").model == "student-int4"
    assert EvaluationConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json")))) == config


def test_every_problem_is_reported_at_once(dataset, tmp_path):
    spec = evaluation_pb2.EvaluationSpec(
        targets=[
            evaluation_pb2.EvalTarget(name="a", base_url="localhost:8000"),
            evaluation_pb2.EvalTarget(name="a", deployment="Not_A_Name"),
            evaluation_pb2.EvalTarget(name="", api_key_env="sk-abc"),
            evaluation_pb2.EvalTarget(name="b", base_url="http://x/v1", model_uri="/etc"),
        ],
        dataset_uri=str(tmp_path / "missing.jsonl"),
        reference="teacher",
        metric="bleu",
        max_prompts=-1,
        sampling=common_pb2.SamplingParams(temperature=0.7, top_logprobs=3),
        concurrency=100,
        gate=evaluation_pb2.QualityGate(candidate="nobody", min_accuracy=1.5),
    )
    problems = _problems(spec)
    assert "http(s) URL" in problems["spec.targets[0].base_url"]
    assert "not a deployment name" in problems["spec.targets[1].deployment"]
    assert "is required" in problems["spec.targets[2].name"]
    assert "set base_url" in problems["spec.targets[2]"]
    assert "looks like an API key" in problems["spec.targets[2].api_key_env"]
    assert "outside the allowed roots" in problems["spec.targets[3].model_uri"]
    assert "'a' is used more than once" in problems["spec.targets"]
    assert "does not exist" in problems["spec.dataset_uri"]
    assert "names no target" in problems["spec.reference"]
    assert "exact_match" in problems["spec.metric"]
    assert "spec.max_prompts" in problems and "spec.concurrency" in problems
    assert "greedily" in problems["spec.sampling.temperature"]
    assert "spec.sampling.top_logprobs" in problems
    assert "names no target" in problems["spec.gate.candidate"]
    assert "less than or equal to 1" in problems["spec.gate.min_accuracy"]


def test_targets_dataset_folder_and_gate(dataset, tmp_path):
    assert (
        "at least one target"
        in _problems(evaluation_pb2.EvaluationSpec(dataset_uri=str(dataset)))["spec.targets"]
    )
    folder = tmp_path / "ds"
    folder.mkdir()
    spec = evaluation_pb2.EvaluationSpec(
        targets=[evaluation_pb2.EvalTarget(name="t", base_url="http://x/v1")],
        dataset_uri=str(folder),
        gate=evaluation_pb2.QualityGate(),
    )
    problems = _problems(spec)
    assert "without a validation split" in problems["spec.dataset_uri"]
    assert "is required" in problems["spec.gate.candidate"]
    (folder / "validation.jsonl").write_text(dataset.read_text())
    spec.gate.candidate = "t"
    spec.gate.min_retention = 0.9
    config = from_proto(spec)
    assert config.gate.candidate == "t" and config.gate.min_retention == 0.9


def _two_targets(dataset, **fields) -> evaluation_pb2.EvaluationSpec:
    targets = [
        evaluation_pb2.EvalTarget(name="teacher", base_url="http://127.0.0.1:8000/v1"),
        evaluation_pb2.EvalTarget(name="student", base_url="http://127.0.0.1:8001/v1"),
    ]
    return evaluation_pb2.EvaluationSpec(targets=targets, dataset_uri=str(dataset), **fields)


def test_the_job_refuses_what_the_service_refuses(dataset):
    config = from_proto(_two_targets(dataset)).model_dump(mode="json")
    config["concurrency_levels"] = [1, 65]
    with pytest.raises(InvalidSpec) as job_refusal:
        job.run(config, f"file://{dataset.parent}/out", lambda *args, **kwargs: None)
    spec = _two_targets(dataset, concurrency_levels=[1, 65])
    field = "spec.concurrency_levels[1]"
    assert job_refusal.value.problems == [(field, _problems(spec)[field])]
    assert "less than or equal to 64" in _problems(spec)[field]


def test_zero_warmup_requests_is_none_and_unset_is_two(dataset):
    assert from_proto(_two_targets(dataset, warmup_requests=0)).warmup_requests == 0
    assert from_proto(_two_targets(dataset)).warmup_requests == 2


@pytest.fixture
async def evaluation_stub(dataset):
    jobs = StageJobs(
        "evaluation", JobStore(f"sqlite:///{dataset.parent}/jobs.sqlite"), FakeRay(), poll_s=0.05
    )
    running = await start_server("evaluation-test", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield evaluation_pb2_grpc.EvaluationServiceStub(channel)
    await channel.close()
    await running.stop(0)
    await jobs.close()


async def test_create_names_every_problem_by_its_full_path(dataset, evaluation_stub):
    spec = _two_targets(
        dataset,
        gate=evaluation_pb2.QualityGate(candidate="student", min_accuracy=1.5),
        answer_pattern=r"(\d+)",  # used only with metric regex
        concurrency=100,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await evaluation_stub.CreateEvaluationJob(evaluation_pb2.CreateEvaluationJobRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [part.split(": ", 1)[0] for part in info.value.details().split("; ")]
    assert sorted(fields) == ["spec.answer_pattern", "spec.concurrency", "spec.gate.min_accuracy"]
