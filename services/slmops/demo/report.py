"""The demo's report: which variant ran (completion or chat), the pipeline's stages (first run and
reused rerun), the evaluation's table of teacher, student and int4 student, the headline ratios, the
rollout, and the lineage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from slmops.api.v1 import common_pb2, pipeline_pb2
from slmops.core import artifacts, tracing
from slmops.demo import task

# What each variant asks, for the report's first lines.
TASKS = {
    "completion": "Task: two-digit addition (`23+45=` -> `68`) as plain completions (`/completions`)",
    "chat": (
        f"Task: two-digit addition as a chat through `/chat/completions` (system `{task.SYSTEM_PROMPT}`, "
        "user `23+45=` -> assistant `68`), trained on `messages` records rendered with ChatML"
    ),
}


def count_trace_spans(data_dir: Path, trace_id: str) -> dict[str, int]:
    """Spans of one trace in the local span file (and its rotated files), counted by service."""
    counts: Counter[str] = Counter()
    for span in tracing.read_spans(data_dir / "traces" / "spans.jsonl"):
        if span.get("trace_id") == trace_id:
            counts[str(span.get("service", "?"))] += 1
    return dict(sorted(counts.items()))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _stages(run: pipeline_pb2.PipelineRun) -> list[dict[str, Any]]:
    return [{"name": s.name, "kind": s.kind, "state": common_pb2.JobState.Name(s.state), "reused": s.reused,
             "seconds": round(s.seconds, 1), "output": s.output.uri, "message": s.message or s.reason}
            for s in run.stages]  # fmt: skip


def _evaluation(run: pipeline_pb2.PipelineRun) -> dict[str, Any]:
    if not run.report_uri:
        return {}
    path = artifacts.local_path(run.report_uri) / "report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_demo_report(out_dir: Path, flow: dict[str, Any]) -> dict[str, Any]:
    first: pipeline_pb2.PipelineRun = flow["first"]
    second: pipeline_pb2.PipelineRun = flow["second"]
    evaluation = _evaluation(first)
    targets = {t["name"]: t for t in evaluation.get("targets", [])}
    teacher, student, int4 = (targets.get(n, {}) for n in ("teacher", "student", "student-int4"))
    p95 = lambda t: t.get("latency_ms", {}).get("p95", 0.0)  # noqa: E731
    headline = {
        "parameter_reduction": _ratio(teacher.get("parameters", 0), student.get("parameters", 0)),
        "latency_p95_reduction_int4_vs_teacher": _ratio(p95(teacher), p95(int4)),
        "memory_reduction_int4_vs_teacher": _ratio(
            teacher.get("memory_bytes", 0), int4.get("memory_bytes", 0)
        ),
        "size_reduction_int4_vs_teacher": _ratio(teacher.get("size_bytes", 0), int4.get("size_bytes", 0)),
        "retention_student": student.get("retention", {}).get("accuracy"),
        "retention_int4": int4.get("retention", {}).get("accuracy"),
    }
    rollout = next((s for s in first.stages if s.kind == "rollout"), None)
    html = str(artifacts.local_path(first.report_uri) / "report.html") if first.report_uri else ""
    reused = sum(1 for s in second.stages if s.reused)
    variant = flow.get("variant", "completion")
    report = {
        "variant": variant,
        "wall_seconds": round(flow["total_seconds"], 1),
        "first_run": {"id": first.id, "state": common_pb2.JobState.Name(first.status.state),
                      "reason": first.status.reason, "seconds": round(flow["first_seconds"], 1),
                      "stages": _stages(first)},
        "rerun": {"id": second.id, "state": common_pb2.JobState.Name(second.status.state),
                  "seconds": round(flow["second_seconds"], 1), "reused": reused, "stages": _stages(second)},
        "trace_id": flow["trace_id"],
        "trace_spans_by_service": flow["trace_spans"],
        "headline": headline,
        "gate": dict(next((s.detail for s in first.stages if s.kind == "gate"), {})),
        "rollout": dict(rollout.detail) if rollout else {},
        "evaluation_report_uri": first.report_uri,
        "evaluation_report_html": html,
        "lineage": [{"kind": ref.kind, "uri": ref.uri} for ref in first.lineage],
    }  # fmt: skip
    lines = [
        f"# slmops demo ({variant}): teacher -> student -> int4 student, as one pipeline",
        "",
        f"{TASKS.get(variant, TASKS['completion'])}; exact-match accuracy on "
        f"{evaluation.get('num_prompts', 0)} held-out prompts. The teacher was trained here from scratch: "
        "no pretrained weights can be downloaded on this machine.",
        "",
        f"First run `{first.id}`: {report['first_run']['state']} in {flow['first_seconds']:.0f} s. "
        f"Rerun of the same file `{second.id}`: {report['rerun']['state']} in {flow['second_seconds']:.1f} s, "
        f"{reused} of {len(second.stages)} stages reused.",
        "",
        "| stage | kind | first run | rerun |",
        "| --- | --- | ---: | --- |",
    ]
    again = {s.name: s for s in second.stages}
    for s in first.stages:
        rerun = again.get(s.name)
        lines.append(f"| {s.name} | {s.kind} | {s.seconds:.1f} s | "
                     f"{'reused' if rerun and rerun.reused else 'ran' if rerun else '-'} |")  # fmt: skip
    tables = _tables(first)
    if tables:
        lines += ["", tables]
    lines += [
        "",
        f"- Student is {_x(headline['parameter_reduction'])} smaller than the teacher in parameters.",
        f"- Accuracy retained (of the teacher's): student {_pct(headline['retention_student'])}, "
        f"int4 student {_pct(headline['retention_int4'])}.",
        f"- Latency p95: int4 student {_x(headline['latency_p95_reduction_int4_vs_teacher'])} lower than the teacher.",
        f"- Predictor memory (RSS): int4 student {_x(headline['memory_reduction_int4_vs_teacher'])} less.",
        f"- Size on disk: int4 student {_x(headline['size_reduction_int4_vs_teacher'])} smaller.",
        f"- Gate: {'PASSED' if report['gate'].get('passed') == 'true' else 'FAILED'} "
        f"({report['gate'].get('reasons', '')}).",
        f"- Rollout: the int4 canary was {report['rollout'].get('action', 'not rolled out')}; deployment `student` "
        f"serves revision {report['rollout'].get('serving_revision', '?')}.",
        f"- Wall time: {report['wall_seconds']:.0f} s in all; trace id `{flow['trace_id']}` with spans from "
        + ", ".join(f"{k} ({v})" for k, v in flow["trace_spans"].items())
        + ".",
        f"- The evaluation's page, with its plots: {html}",
        "",
        "Lineage of the served revision:",
        "",
        *[f"{'  ' * i}- {entry['kind']}: {entry['uri']}" for i, entry in enumerate(report["lineage"])],
        "",
    ]
    markdown = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown)
    finished = all(s.state == common_pb2.SUCCEEDED for s in first.stages) and len(first.stages) > 0
    ok = (
        finished
        and bool(html)
        and bool(headline["parameter_reduction"] and headline["parameter_reduction"] >= 5)
    )
    return {"markdown": markdown, "ok": ok, "report": report, "html": html}


def _tables(run: pipeline_pb2.PipelineRun) -> str:
    from slmops.cli.pipeline_commands import report_tables

    return report_tables(run.report_uri)
