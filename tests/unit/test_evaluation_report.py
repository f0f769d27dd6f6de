"""The checker, example loading, report math (percentiles, retention, gate) and the report files."""

from __future__ import annotations

import json

import pytest

from slmops.core import artifacts
from slmops.core.errors import InvalidSpec
from slmops.evaluation.client import (
    Measurement,
    is_correct,
    load_examples,
    model_footprint,
    origin,
    scrape_memory,
)
from slmops.evaluation.config import GateConfig
from slmops.evaluation.report import (
    headlines,
    judge,
    markdown,
    percentile,
    set_retention,
    summarize,
    write_report,
)
from slmops.testing.standin import StandinServer


@pytest.mark.parametrize(
    ("expected", "completion", "metric", "ok"),
    [
        ("68", "68", "exact_match", True),
        (" 68 ", "  68\nand more", "exact_match", True),
        ("68", "680", "exact_match", False),
        ("68", "the answer is 68", "exact_match", False),
        ("68", "", "exact_match", False),
        ("68", "the answer is 68", "contains", True),
        ("68", "6 8", "contains", False),
    ],
)
def test_checker(expected, completion, metric, ok):
    assert is_correct(expected, completion, metric) is ok


def test_percentiles_interpolate_linearly():
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) == 0.0


def _measurement(name, correct, latencies, tokens, **kw) -> Measurement:
    return Measurement(name=name, correct=correct, latencies_ms=latencies, completion_tokens=tokens, **kw)


def _results():
    teacher = summarize(
        _measurement(
            "teacher",
            [True] * 8 + [False] * 2,
            [100.0] * 10,
            [5] * 10,
            size_bytes=1_000_000,
            memory_bytes=4_000_000,
            parameters=1000,
        )
    )
    student = summarize(
        _measurement(
            "student",
            [True] * 6 + [False] * 4,
            [20.0] * 9 + [40.0],
            [5] * 10,
            size_bytes=250_000,
            memory_bytes=1_000_000,
            parameters=100,
        )
    )
    results = [teacher, student]
    set_retention(results, "teacher")
    return results


def test_summary_retention_and_headlines():
    teacher, student = _results()
    assert teacher.accuracy == 0.8 and student.accuracy == 0.6
    assert teacher.retention == 1.0 and student.retention == pytest.approx(0.75)
    assert teacher.tokens_per_second == pytest.approx(50.0)  # 50 tokens in 1 s
    assert student.tokens_per_second == pytest.approx(50 / 0.22)
    assert student.latency_p50_ms == 20.0 and student.latency_p95_ms == pytest.approx(31.0)
    h = headlines(student, teacher)
    assert h == pytest.approx(
        {
            "latency_reduction": 5.0,
            "memory_reduction": 4.0,
            "size_reduction": 4.0,
            "retention": 0.75,
        }
    )
    assert headlines(summarize(Measurement(name="x")), teacher)["memory_reduction"] is None


def test_retention_when_the_reference_scores_zero():
    results = [
        summarize(_measurement("ref", [False], [1.0], [1])),
        summarize(_measurement("s", [True], [1.0], [1])),
    ]
    set_retention(results, "ref")
    assert [r.retention for r in results] == [0.0, 0.0] and "undefined" in results[0].notes[0]


def test_gate_verdicts():
    results = _results()
    verdict = judge(
        GateConfig(candidate="student", min_retention=0.7, min_accuracy=0.5, max_latency_p95_ms=30),
        results,
    )
    assert verdict.evaluated and not verdict.passed
    assert verdict.reasons == [
        "student: ok: retention 0.750 >= min 0.700",
        "student: ok: accuracy 0.600 >= min 0.500",
        "student: FAILED: latency p95 31.0 ms > max 30.0 ms",
    ]
    assert judge(GateConfig(candidate="student", min_retention=0.75), results).passed  # 0.6 / 0.8 meets 0.75
    assert judge(GateConfig(candidate="student"), results).passed
    assert not judge(None, results).evaluated


def test_report_files(tmp_path):
    results = _results()
    verdict = judge(GateConfig(candidate="student", min_retention=0.9), results)
    uri = f"file://{tmp_path}/report"
    write_report(uri, results, verdict, reference="teacher", metric="exact_match", dataset_uri="file:///d")
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["name"] for r in document["results"]] == ["teacher", "student"]
    assert document["verdict"]["passed"] is False
    assert document["headlines"]["student"]["size_reduction"] == 4.0
    text = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| student | 60.0% | 75.0% | 20.0 | 31.0 | 38.2 | 0.0 | 0.00 | 227.3 | 250.0 kB | 1.0 MB | 100 |"
        in text
    )
    assert "latency p50 5.00x lower (80% less)" in text and "size 4.00x lower (75% less)" in text
    assert "**FAILED**" in text and "![accuracy and p50 latency per target](report.png)" in text
    assert (tmp_path / "report" / "report.png").read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3
    assert [t["name"] for t in document["targets"]] == ["teacher", "student"]
    assert document["targets"][1]["retention"]["accuracy"] == pytest.approx(0.75)
    assert "only the reference" in markdown(
        results[:1], verdict, reference="teacher", metric="m", dataset_uri="d"
    )


def test_examples_from_a_dataset_folder_or_jsonl(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "validation.jsonl").write_text(
        json.dumps({"prompt": "1+1=", "answer": "2", "completion": "3"})
        + "\n"
        + json.dumps({"prompt": "2+2=", "completion": "4"})
        + "\n"
    )
    examples = load_examples(f"file://{folder}")
    assert [(e.prompt, e.expected) for e in examples] == [("1+1=", "2"), ("2+2=", "4")]
    assert len(load_examples(f"file://{folder}", max_prompts=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(InvalidSpec, match='line 1: needs "answer" or "completion"'):
        load_examples(str(bad))


def test_memory_is_scraped_from_metrics():
    assert origin("http://127.0.0.1:8080/openai/v1") == "http://127.0.0.1:8080"
    with StandinServer() as server:
        memory, note = scrape_memory(server.base_url)
    assert memory > 10_000_000 and note == ""
    memory, note = scrape_memory("http://127.0.0.1:9/v1", timeout_s=1)
    assert memory == 0 and "unavailable" in note


def test_footprint_from_a_manifest(tmp_path):
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x" * 1234)
    artifacts.finalize(f"file://{folder}", "onnx-model", metrics={"parameters": 4321})
    assert model_footprint(str(folder)) == (1234, 4321)
    assert model_footprint("") == (0, 0)


def test_a_failed_target_is_reported_and_fails_a_gate_on_it():
    teacher, student = _results()
    offline = summarize(Measurement(name="offline", status="failed", reason="cannot list models: refused"))
    results = [teacher, student, offline]
    set_retention(results, "teacher")
    assert offline.retentions == {} and offline.quality == {}
    verdict = judge(GateConfig(candidate="offline", min_retention=0.1), results)
    assert verdict.evaluated and not verdict.passed and "could not be evaluated" in verdict.reasons[0]
    text = markdown(results, verdict, reference="teacher", metric="exact_match", dataset_uri="d")
    assert "## Failed targets" in text and "**offline**: cannot list models: refused" in text


def test_gate_on_other_metrics_and_throughput():
    teacher = summarize(_measurement("teacher", [True] * 10, [100.0] * 10, [5] * 10))
    student = summarize(_measurement("student", [True] * 10, [50.0] * 10, [5] * 10))
    teacher.quality.update(rouge_l=0.8, chrf=60.0)
    student.quality.update(rouge_l=0.6, chrf=57.0)
    results = [teacher, student]
    set_retention(results, "teacher")
    assert student.retentions["rouge_l"] == pytest.approx(0.75) and student.retentions[
        "chrf"
    ] == pytest.approx(0.95)
    gate = GateConfig(
        candidate="student",
        min_retention_by_metric={"rouge_l": 0.8, "chrf": 0.9, "judge": 0.5},
        min_tokens_per_second=200.0,
    )
    verdict = judge(gate, results)
    assert not verdict.passed
    assert verdict.reasons == [
        "student: FAILED: retention of chrf 0.950 >= min 0.900".replace("FAILED", "ok"),
        "student: FAILED: retention of judge unknown (not measured, or the reference scored 0 or failed) < min 0.500",
        "student: FAILED: retention of rouge_l 0.750 < min 0.800",
        "student: FAILED: tokens/s 100.0 < min 200.0",
    ]
