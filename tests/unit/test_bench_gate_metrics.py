"""A gate may only name metrics the evaluation measures, and `slmops bench --quality` adds to the
default metrics, so the README's bench command passes its own checks.

A retention gate on a metric that is not measured (rouge_l left out of an explicit
quality_metrics, judge without a judge, perplexity, which has no retention) is refused
before the job starts: by the evaluation service (Create and validate_only), by the job
(the same model), and by a pipeline's checks of its evaluate stages, each naming
`spec.gate.min_retention_by_metric["METRIC"]` and how to measure it. The evaluation
service runs in process on a free port with a fake Ray (no job runs).
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from slmops.api.v1 import evaluation_pb2, evaluation_pb2_grpc
from slmops.cli import bench_commands
from slmops.cli.main import build_parser
from slmops.core.errors import InvalidSpec
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.evaluation import config as evaluation_config
from slmops.evaluation.service import registration
from slmops.evaluation.spec import from_proto
from slmops.pipeline import definition, stages
from tests.unit._fakes import FakeRay
from tests.unit.test_docs_commands import argv, mentions

ROUGE_L = 'spec.gate.min_retention_by_metric["rouge_l"]'


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLMOPS_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("SLMOPS_ARTIFACT_ROOT", raising=False)
    path = tmp_path / "held-out.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    return path


def _spec(dataset, quality=(), with_judge=False, **by_metric: float) -> evaluation_pb2.EvaluationSpec:
    spec = evaluation_pb2.EvaluationSpec(
        targets=[
            evaluation_pb2.EvalTarget(name="teacher", base_url="http://127.0.0.1:8000/v1"),
            evaluation_pb2.EvalTarget(name="student", base_url="http://127.0.0.1:8001/v1"),
        ],
        dataset_uri=str(dataset),
        quality_metrics=list(quality),
        gate=evaluation_pb2.QualityGate(candidate="student", min_retention_by_metric=by_metric),
    )
    if with_judge:
        spec.judge.CopyFrom(evaluation_pb2.JudgeSpec(base_url="http://127.0.0.1:8002/v1", model="judge"))
    return spec


def _problems(spec) -> dict[str, str]:
    try:
        from_proto(spec)
    except InvalidSpec as exc:
        return dict(exc.problems)
    return {}


# -- the CLI ------------------------------------------------------------------------


def _bench(*flags: str) -> evaluation_pb2.EvaluationSpec:
    args = build_parser().parse_args(["bench", "--dataset", "d.jsonl", "--target", "t=http://x/v1", *flags])
    return bench_commands.bench_spec(args)


def test_quality_adds_to_the_default_metrics():
    assert list(_bench().quality_metrics) == []  # the service's default: rouge_l, chrf, bleu
    extra = _bench("--quality", "semantic_similarity", "--quality", "perplexity").quality_metrics
    assert list(extra) == ["rouge_l", "chrf", "bleu", "semantic_similarity", "perplexity"]
    assert list(_bench("--quality", "chrf").quality_metrics) == ["rouge_l", "chrf", "bleu"]
    assert bench_commands.DEFAULT_QUALITY == evaluation_config.DEFAULT_QUALITY


def test_judge_concurrency_reaches_the_spec():
    spec = _bench("--judge-url", "http://j/v1", "--judge-model", "m", "--judge-concurrency", "8")
    assert spec.judge.concurrency == 8 and spec.judge.chat
    assert _bench("--judge-url", "http://j/v1", "--judge-model", "m").judge.concurrency == 0  # the default, 4


def test_the_readme_bench_command_passes_its_own_checks(dataset):
    """The README's bench example (gate on rouge_l with --quality) makes a spec the service accepts."""
    (readme,) = [
        m
        for m in mentions({"slmops"})
        if m.file == "README.md" and m.fenced and m.text.startswith("slmops bench")
    ]
    assert "--min-retention-of rouge_l=" in readme.text and "--quality" in readme.text
    spec = bench_commands.bench_spec(build_parser().parse_args(argv(readme.text)[1:]))
    spec.dataset_uri = str(dataset)  # the README's held-out.jsonl, here
    config = from_proto(spec)
    assert "rouge_l" in config.quality_metrics and config.gate.min_retention_by_metric["rouge_l"] > 0
    # Without the defaults, the same gate would be refused.
    del spec.quality_metrics[:3]
    assert "not measured" in _problems(spec)[ROUGE_L]


# -- the spec -----------------------------------------------------------------------


def test_a_gate_on_a_metric_not_measured_is_refused(dataset):
    problems = _problems(_spec(dataset, ["semantic_similarity"], rouge_l=0.8, judge=0.5, perplexity=0.9))
    assert "rouge_l is not measured" in problems[ROUGE_L]
    assert "add rouge_l to spec.quality_metrics, now semantic_similarity" in problems[ROUGE_L]
    assert "--quality rouge_l" in problems[ROUGE_L]
    judge = problems['spec.gate.min_retention_by_metric["judge"]']
    assert "judge is not measured" in judge and "set spec.judge" in judge and "--judge-url" in judge
    assert "no retention" in problems['spec.gate.min_retention_by_metric["perplexity"]']
    assert len(problems) == 3  # every problem at once, nothing else


def test_a_gate_on_a_measured_metric_is_accepted(dataset):
    assert _problems(_spec(dataset, rouge_l=0.8, chrf=0.8, bleu=0.5, accuracy=0.9)) == {}  # the defaults
    assert _problems(_spec(dataset, ["semantic_similarity"], semantic_similarity=0.9, accuracy=0.9)) == {}
    assert _problems(_spec(dataset, ["chrf"], with_judge=True, judge=0.5, chrf=0.7)) == {}
    assert _problems(_spec(dataset, ["semantic_similarity"], rouge_l=0.0)) == {}  # 0 is not checked
    missing = _problems(_spec(dataset, rouge_l=0.8, semantic_similarity=0.9))
    assert list(missing) == ['spec.gate.min_retention_by_metric["semantic_similarity"]']
    assert "now rouge_l, chrf, bleu" in missing['spec.gate.min_retention_by_metric["semantic_similarity"]']


def test_an_unknown_metric_is_named_once(dataset):
    problems = _problems(_spec(dataset, rouge=0.8))
    assert (
        list(problems) == ['spec.gate.min_retention_by_metric["rouge"]']
        and "unknown metric" in problems['spec.gate.min_retention_by_metric["rouge"]']
    )


def test_the_job_refuses_what_the_service_refuses(dataset):
    config = from_proto(_spec(dataset, ["rouge_l", "semantic_similarity"], rouge_l=0.8)).model_dump(
        mode="json"
    )
    config["quality_metrics"] = ["semantic_similarity"]
    with pytest.raises(InvalidSpec) as refusal:
        evaluation_config.validated(config)
    assert [path for path, _ in refusal.value.problems] == [ROUGE_L]
    config["quality_metrics"] = []  # an empty list measures the defaults, as in the proto
    assert evaluation_config.validated(config).quality_metrics == list(evaluation_config.DEFAULT_QUALITY)


# -- through the service and a pipeline -----------------------------------------------


@pytest.fixture
async def evaluation_port(dataset):
    jobs = StageJobs(
        "evaluation", JobStore(f"sqlite:///{dataset.parent}/jobs.sqlite"), FakeRay(), poll_s=0.05
    )
    running = await start_server("evaluation-test", [registration(jobs)])
    yield running.port
    await running.stop(0)
    await jobs.close()


@pytest.mark.parametrize("validate_only", [False, True])
async def test_create_refuses_it_naming_the_entry(dataset, evaluation_port, validate_only):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{evaluation_port}") as channel:
        stub = evaluation_pb2_grpc.EvaluationServiceStub(channel)
        request = evaluation_pb2.CreateEvaluationJobRequest(
            spec=_spec(dataset, ["semantic_similarity"], rouge_l=0.8), validate_only=validate_only
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateEvaluationJob(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{ROUGE_L}: rouge_l is not measured")


async def test_a_pipeline_refuses_it_before_any_stage_runs(dataset, evaluation_port, monkeypatch):
    text = f"""
name: gated
stages:
  held-out: {{kind: dataset, uri: "{dataset}"}}
  evaluate:
    kind: evaluate
    dataset: held-out
    targets: [{{name: teacher, base_url: "http://127.0.0.1:8000/v1"}},
              {{name: student, base_url: "http://127.0.0.1:8001/v1"}}]
    spec:
      reference: teacher
      quality_metrics: [semantic_similarity]
      gate: {{candidate: student, min_retention_by_metric: {{rouge_l: 0.8, semantic_similarity: 0.9}}}}
"""
    channel = grpc.insecure_channel(f"127.0.0.1:{evaluation_port}")
    monkeypatch.setattr(
        stages.client, "stub", lambda service: evaluation_pb2_grpc.EvaluationServiceStub(channel)
    )
    monkeypatch.setattr(stages.client, "call", lambda method, request, **_: method(request))
    try:
        with pytest.raises(InvalidSpec) as refusal:
            await asyncio.to_thread(stages.validate_all, definition.parse(text))
    finally:
        channel.close()
    (field, problem), *others = refusal.value.problems
    assert field == f"spec.definition_yaml.stages.evaluate.{ROUGE_L}" and not others
    assert "rouge_l is not measured" in problem and "--quality rouge_l" in problem
