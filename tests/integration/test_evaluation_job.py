"""The evaluation job against two OpenAI-compatible targets, producing report files.

Both targets are `slmops.testing.standin.StandinServer` instances in this
test process: they stand in for a remote paid teacher and a served student
(deterministic answers, a fixed delay per request, a Prometheus /metrics).
The student is wrong on purpose on every prompt whose sum is a multiple of 4.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slmops.core import artifacts, tracing
from slmops.evaluation.job import run
from slmops.testing.standin import StandinServer, arithmetic_answer

pytestmark = pytest.mark.integration

EXAMPLES = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(4)]
TRACE_ID = "cd" * 16
TRACEPARENT = f"00-{TRACE_ID}-{'e' * 16}-01"
STUDENT_WRONG = sum(1 for e in EXAMPLES if int(e["answer"]) % 4 == 0)


def student_answer(model: str, prompt: str) -> str:
    value = arithmetic_answer(model, prompt)
    return value + "1" if int(value) % 4 == 0 else value + "\nmore text"


@pytest.fixture(scope="module")
def servers():
    with (
        StandinServer(delay_s=0.03) as teacher,
        StandinServer(student_answer, delay_s=0.005) as student,
    ):
        yield teacher, student


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny teacher checkpoint, and a student 'onnx-model' artifact whose parent is its checkpoint."""
    from slmops.testing.tiny import build_model, train_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = train_tokenizer([e["prompt"] + e["answer"] for e in EXAMPLES], root / "tok", vocab_size=260)
    teacher = build_model(root / "teacher", tok, hidden_size=64, num_hidden_layers=2)
    student_ckpt = build_model(root / "student-ckpt", tok, hidden_size=32, num_hidden_layers=1)
    onnx = root / "student-onnx"
    onnx.mkdir()
    (onnx / "model.onnx.data").write_bytes(b"\0" * 50_000)
    artifacts.finalize(artifacts.to_uri(onnx), "onnx-model", parents=[artifacts.to_uri(student_ckpt)])
    return {"teacher": teacher, "student-ckpt": student_ckpt, "student": onnx}


def test_evaluation_job_reports_two_targets(servers, models, tmp_path, monkeypatch):
    from slmops.testing.tiny import count_parameters

    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    teacher, student = servers
    teacher.requests.clear()
    dataset = tmp_path / "eval.jsonl"
    dataset.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    config = {
        "targets": [
            {
                "name": "teacher",
                "base_url": teacher.base_url,
                "model": "teacher",
                "model_uri": artifacts.to_uri(models["teacher"]),
            },
            {
                "name": "student",
                "base_url": student.base_url,
                "chat": True,
                "model_uri": artifacts.to_uri(models["student"]),
            },
            {"name": "offline", "base_url": "http://127.0.0.1:9/v1", "model": "x"},  # nothing listens
        ],
        "dataset_uri": artifacts.to_uri(dataset),
        "reference": "teacher",
        "metric": "exact_match",
        "sampling": {"max_tokens": 16},
        "warmup_requests": 2,
        "concurrency_levels": [1, 4],
        "quality_metrics": ["rouge_l", "chrf", "bleu", "perplexity"],
        "gate": {"candidate": "student", "min_retention": 0.9, "min_accuracy": 0.5},
    }
    events = []
    out = tmp_path / "report"
    # As the job runner does: the job runs inside a span continuing the caller's trace.
    with tracing.span_from("test.evaluation", TRACEPARENT):
        result = run(config, str(out), lambda f, m, **kw: events.append((f, m)), trace_id=TRACE_ID)

    by_name = {r["name"]: r for r in result["results"]}
    assert by_name["teacher"]["accuracy"] == 1.0
    expected_student = (len(EXAMPLES) - STUDENT_WRONG) / len(EXAMPLES)
    assert by_name["student"]["accuracy"] == pytest.approx(expected_student)
    assert by_name["student"]["retention"] == pytest.approx(expected_student)
    assert by_name["teacher"]["num_prompts"] == len(EXAMPLES)
    assert by_name["teacher"]["latency_p50_ms"] >= 30.0
    assert by_name["teacher"]["latency_p95_ms"] >= by_name["teacher"]["latency_p50_ms"]
    assert by_name["teacher"]["tokens_per_second"] > 0
    # Memory from the stand-in's /metrics; size and parameters from the model URIs.
    assert by_name["teacher"]["memory_bytes"] > 10_000_000
    assert by_name["teacher"]["parameters"] == count_parameters(models["teacher"])
    assert by_name["student"]["parameters"] == count_parameters(models["student-ckpt"])
    assert by_name["student"]["size_bytes"] == 50_000

    verdict = result["verdict"]
    assert verdict["evaluated"] and not verdict["passed"]
    assert any("FAILED: retention" in r for r in verdict["reasons"])
    assert any("ok: accuracy" in r for r in verdict["reasons"])
    assert result["metrics"]["gate_passed"] == 0.0
    assert result["metrics"]["student.accuracy"] == pytest.approx(expected_student)

    # The unreachable target is reported failed with its reason; the others are measured.
    assert by_name["offline"]["status"] == "failed" and "127.0.0.1:9" in by_name["offline"]["reason"]
    assert result["metrics"]["offline.failed"] == 1.0 and result["metrics"]["teacher.failed"] == 0.0
    # Streamed requests: time to first token before the end, time per token after it.
    assert 0 < by_name["teacher"]["ttft_p50_ms"] <= by_name["teacher"]["latency_p50_ms"]
    assert by_name["teacher"]["quality"]["chrf"] == pytest.approx(100.0)
    assert 0 < by_name["student"]["retentions"]["chrf"] < 1
    assert by_name["teacher"]["perplexity"] > 1  # from the teacher's checkpoint
    assert [level["concurrency"] for level in by_name["teacher"]["sweep"]] == [1, 4]
    assert all(level["tokens_per_second"] > 0 for level in by_name["student"]["sweep"])

    # 2 warm-ups + one request per example at each concurrency level, each with a W3C
    # traceparent of the job's trace.
    assert len(teacher.requests) == 2 + 2 * len(EXAMPLES)
    assert all(
        re.match(rf"00-{TRACE_ID}-[0-9a-f]{{16}}-[0-9a-f]{{2}}$", r["traceparent"] or "")
        for r in teacher.requests
    )
    assert student.requests[-1]["path"] == "/v1/chat/completions"
    assert teacher.requests[-1]["body"]["temperature"] == 0.0

    report = json.loads((out / "report.json").read_text())
    assert report["headlines"]["student"]["retention"] == pytest.approx(expected_student)
    markdown = (out / "report.md").read_text()
    assert "| teacher | 100.0% |" in markdown and "**FAILED**" in markdown and "](report.png)" in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Failed targets" in markdown and "**offline**" in markdown
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and "offline" in page
    manifest = artifacts.read_manifest(artifacts.to_uri(out))
    assert manifest.kind == "report" and manifest.trace_id == TRACE_ID
    assert manifest.parents == [
        artifacts.to_uri(models["student"]),
        artifacts.to_uri(models["teacher"]),
        artifacts.to_uri(dataset),
    ]
    assert events[-1][0] == 1.0
