"""The judge in the evaluation: its scores in report.md and report.html, a gate on its retention, and
JudgeSpec's validation.

The judge is `StandinServer` on loopback, standing in for a judge model: it
gives 9 to an answer equal to the reference and 2 to any other (see
test_evaluation_judge.grader), so the figures the report shows are known.
"""

from __future__ import annotations

import json

import grpc
import pytest

from slmops.api.v1 import evaluation_pb2
from slmops.evaluation.client import Example, Measurement
from slmops.evaluation.config import EvaluationConfig
from slmops.evaluation.quality import add_quality
from slmops.evaluation.report import judge, set_retention, summarize, write_report
from slmops.evaluation.spec import from_proto
from slmops.testing.standin import StandinServer
from tests.unit.test_evaluation_judge import grader
from tests.unit.test_evaluation_spec import _two_targets, dataset, evaluation_stub  # noqa: F401 (fixtures)

EXAMPLES = [Example(f"{i}+1=", str(i + 1)) for i in range(8)]
STUDENT = [str(i + 2) if i % 4 == 0 else str(i + 1) for i in range(8)]  # wrong on 0+1= and 4+1=


def _evaluate(judge_url: str, tmp_path, min_judge_retention: float = 0.9):
    cfg = EvaluationConfig.model_validate({
        "targets": [{"name": "teacher", "base_url": "http://127.0.0.1:1/v1"},
                    {"name": "student", "base_url": "http://127.0.0.1:2/v1"}],
        "dataset_uri": "unused.jsonl", "quality_metrics": ["rouge_l"],
        "judge": {"base_url": judge_url, "model": "judge-model", "concurrency": 2},
        "gate": {"candidate": "student", "min_retention_by_metric": {"judge": min_judge_retention}},
    })  # fmt: skip
    measured = [Measurement(name="teacher", completions=[e.expected for e in EXAMPLES], correct=[True] * 8),
                Measurement(name="student", completions=STUDENT, correct=[i % 4 != 0 for i in range(8)])]  # fmt: skip
    add_quality(cfg, EXAMPLES, measured)
    results = [summarize(m) for m in measured]
    set_retention(results, "teacher")
    verdict = judge(cfg.gate, results)
    write_report(str(tmp_path), results, verdict, reference="teacher", metric="exact_match",
                 dataset_uri="unused.jsonl", candidate="student", judge_model="judge-model at " + judge_url)  # fmt: skip
    return results, verdict


def test_the_judge_scores_show_in_both_reports_and_gate_the_candidate(tmp_path):
    with StandinServer(grader) as server:
        results, verdict = _evaluate(server.base_url, tmp_path)
        assert len(server.requests) == 16  # every answer of both targets, once
    teacher, student = results
    assert teacher.quality["judge"] == 9.0 and student.quality["judge"] == pytest.approx(7.25)
    assert student.retentions["judge"] == pytest.approx(7.25 / 9)
    assert not verdict.passed
    assert verdict.reasons == ["student: FAILED: retention of judge 0.806 < min 0.900"]

    report = json.loads((tmp_path / "report.json").read_text())
    entry = next(t for t in report["targets"] if t["name"] == "student")
    assert entry["judge"]["rated"] == 8 and entry["judge"]["mean"] == pytest.approx(7.25)

    md = (tmp_path / "report.md").read_text()
    assert "## LLM judge" in md and "`judge-model at http://127.0.0.1:" in md
    assert "| teacher | 9.00 | 100.0% | 8 | 0 | 0 |" in md
    assert "| student | 7.25 | 80.6% | 8 | 0 | 0 |" in md
    assert "| student | 2 | 0+1= | 2 | 1 | not the reference answer. |" in md  # the lowest rating first
    assert "| 7.25/10 (81%) |" in md  # the judge's column of the quality table

    page = (tmp_path / "report.html").read_text()
    section = page.split("<h2>LLM judge</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<td>7.25</td><td>81%</td><td>8</td><td>0</td><td>0</td>" in section
    assert '<span class="swatch"' in section and "why no mean" not in section  # the tables' look
    assert '<td class="reason">not the reference answer.</td>' in section
    assert "<code>judge-model at http://127.0.0.1:" in section


def test_an_unreachable_judge_fails_its_metric_not_the_report_and_the_gate_says_why(tmp_path):
    results, verdict = _evaluate("http://127.0.0.1:9/v1", tmp_path)  # nothing listens
    assert all("judge" not in r.quality and r.judge["error"].startswith("judge unavailable") for r in results)
    assert any("judge unavailable: APIConnectionError" in note for note in results[1].notes)
    assert not verdict.passed
    (reason,) = verdict.reasons
    assert reason.startswith("student: FAILED: retention of judge unknown (teacher: judge unavailable: ")
    assert "127.0.0.1:9" in reason and reason.endswith("< min 0.900")
    md = (tmp_path / "report.md").read_text()
    assert "| student | n/a | n/a | 0 | 0 | 8 |" in md and "- **student**: judge unavailable" in md
    page = (tmp_path / "report.html").read_text()
    assert "why no mean" in page and "judge unavailable: APIConnectionError" in page


def _judge_problems(spec) -> dict[str, str]:
    from slmops.core.errors import InvalidSpec

    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    return {field: problem for field, problem in info.value.problems if field.startswith("spec.judge")}


def test_judge_spec_validation(dataset):  # noqa: F811 (the fixture)
    def spec(**judge):
        return _two_targets(dataset, judge=evaluation_pb2.JudgeSpec(**judge))

    assert (
        from_proto(spec(base_url="http://127.0.0.1:7/v1", model="j")).judge.concurrency == 4
    )  # 0: the default
    assert (
        from_proto(spec(base_url="http://127.0.0.1:7/v1", model="j", concurrency=16)).judge.concurrency == 16
    )
    problems = _judge_problems(spec(base_url="http://127.0.0.1:7/v1", model="j", concurrency=17))
    assert problems == {"spec.judge.concurrency": "must be less than or equal to 16, got 17"}
    problems = _judge_problems(spec(base_url="http://127.0.0.1:7/v1", model="j", concurrency=-1))
    assert problems == {"spec.judge.concurrency": "must be greater than or equal to 1, got -1"}
    empty = _two_targets(dataset)
    empty.judge.SetInParent()  # a judge with nothing set
    assert _judge_problems(empty) == {"spec.judge.base_url": "is required",
                                      "spec.judge.model": "is required (the judge model's name at the endpoint)"}  # fmt: skip


async def test_create_refuses_a_bad_judge_naming_its_fields(dataset, evaluation_stub):  # noqa: F811
    spec = _two_targets(dataset, judge=evaluation_pb2.JudgeSpec(concurrency=40))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await evaluation_stub.CreateEvaluationJob(evaluation_pb2.CreateEvaluationJobRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = sorted(part.split(": ", 1)[0] for part in info.value.details().split("; "))
    assert fields == ["spec.judge.base_url", "spec.judge.concurrency", "spec.judge.model"]
