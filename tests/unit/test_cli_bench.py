"""`slmops bench`: its flags make the evaluation spec, and a failed gate makes it exit non-zero.

The evaluation service is a stand-in here (a stub answering Create and the job's
end); the job itself is tested in tests/integration/test_evaluation_job.py.
"""

from __future__ import annotations

import pytest

from slmops.api.v1 import common_pb2, evaluation_pb2
from slmops.cli import bench_commands, common
from slmops.cli.main import build_parser

ARGS = ["bench", "--dataset", "/d/held-out.jsonl", "--target", "teacher=http://t/v1", "--target", "student=student",
        "--reference", "teacher", "--quality", "semantic_similarity", "--concurrency", "1", "--concurrency", "8",
        "--metric", "regex", "--answer-pattern", r"answer: (\d+)", "--gate-candidate", "student",
        "--min-retention", "0.9", "--min-retention-of", "rouge_l=0.8", "--max-p95-ms", "300",
        "--min-tokens-per-second", "50"]  # fmt: skip


def test_flags_make_the_spec():
    spec = bench_commands.bench_spec(build_parser().parse_args(ARGS))
    assert [t.name for t in spec.targets] == ["teacher", "student"]
    assert spec.targets[0].base_url == "http://t/v1" and spec.targets[1].deployment == "student"
    # --quality adds to the defaults
    assert list(spec.quality_metrics) == ["rouge_l", "chrf", "bleu", "semantic_similarity"]
    assert list(spec.concurrency_levels) == [1, 8]
    assert spec.metric == "regex" and spec.answer_pattern == r"answer: (\d+)"
    gate = spec.gate
    assert gate.candidate == "student" and gate.min_retention == 0.9 and gate.max_latency_p95_ms == 300
    assert dict(gate.min_retention_by_metric) == {"rouge_l": 0.8} and gate.min_tokens_per_second == 50


def test_target_options_reach_the_spec_and_unknown_ones_are_refused():
    args = build_parser().parse_args([
        "bench", "--dataset", "/d/chats.jsonl", "--target", "teacher=http://t/v1,chat,api_key_env=TEACHER_KEY,model=big",
        "--target", "student=student,chat,model_uri=/m/student", "--judge-url", "http://j/v1", "--judge-completions",
    ])  # fmt: skip
    spec = bench_commands.bench_spec(args)
    teacher, student = spec.targets
    assert (teacher.chat, teacher.api_key_env, teacher.model) == (True, "TEACHER_KEY", "big")
    assert student.chat and student.deployment == "student" and student.model_uri.endswith("/m/student")
    assert not spec.judge.chat  # --judge-completions
    for bad in ("student=student,chats", "student=student,model_uri=", "student", "=student"):
        with pytest.raises(SystemExit, match="--target"):
            bench_commands.bench_spec(
                build_parser().parse_args(["bench", "--dataset", "/d", "--target", bad])
            )


def test_a_bad_threshold_flag_is_an_error():
    args = build_parser().parse_args([*ARGS[:7], "--min-retention-of", "rouge_l"])
    with pytest.raises(SystemExit, match="METRIC=NUMBER"):
        bench_commands.bench_spec(args)


class FakeEvaluation:
    def __init__(self, passed: bool):
        self.passed = passed
        self.CreateEvaluationJob = lambda request, timeout=None: evaluation_pb2.EvaluationJob(id="evalu-1")
        self.WatchEvaluationJob = self.GetEvaluationJob = None

    def finished(self, *args, **kwargs) -> evaluation_pb2.EvaluationJob:
        job = evaluation_pb2.EvaluationJob(id="evalu-1")
        job.status.state = common_pb2.SUCCEEDED
        job.status.output.uri = "file:///r"
        job.verdict.evaluated = True
        job.verdict.passed = self.passed
        job.verdict.reasons.append(
            "student: ok" if self.passed else "student: FAILED: retention 0.5 < min 0.9"
        )
        job.results.append(evaluation_pb2.TargetResult(name="offline", status="failed", reason="refused"))
        return job


@pytest.mark.parametrize(("passed", "code"), [(True, 0), (False, 3)])
def test_a_failed_gate_exits_non_zero(monkeypatch, capsys, passed, code):
    fake = FakeEvaluation(passed)
    monkeypatch.setattr(common.client, "stub", lambda service: fake)
    monkeypatch.setattr(common.client, "call", lambda method, request, **_: method(request))
    monkeypatch.setattr(common, "watch_job", fake.finished)
    args = build_parser().parse_args(ARGS)
    assert args.func(args) == code
    err = capsys.readouterr().err
    assert "report: file:///r/report.html" in err and "offline: FAILED to evaluate: refused" in err
    assert ("gate: PASSED" if passed else "gate: FAILED") in err
