"""The demo's report: one table of teacher, student and int4 student, and the headline ratios."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from slmops.core import artifacts


def count_trace_spans(data_dir: Path, trace_id: str) -> dict[str, int]:
    """Spans of one trace in the local span file, counted by service."""
    counts: Counter[str] = Counter()
    path = data_dir / "traces" / "spans.jsonl"
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        try:
            span = json.loads(line)
        except json.JSONDecodeError:
            continue
        if span.get("trace_id") == trace_id:
            counts[span.get("service", "?")] += 1
    return dict(sorted(counts.items()))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _rollout_line(rollout: dict[str, Any]) -> str:
    if not rollout:
        return "- Rollout: none."
    n, pct = rollout["canary_revision"], rollout["canary_percent"]
    done = (f"promoted to 100% in {rollout['seconds']:.1f} s" if rollout["serving_revision"] == n
            else f"rolled back in {rollout['seconds']:.1f} s")  # fmt: skip
    return (f"- Rollout: the int4 student ran as revision {n} of deployment `student`, a {pct}% canary beside the "
            f"fp32 student; after the gate {'passed' if rollout['evaluation_passed'] else 'failed'} it was {done}.")


def write_demo_report(out_dir: Path, flow: dict[str, Any]) -> dict[str, Any]:
    evaluation = flow["evaluation"]
    results = {r.name: r for r in evaluation.results}
    uris = {"teacher": flow["teacher_uri"], "student": flow["student_uri"], "student-int4": flow["int4_uri"]}
    models = []
    for name, uri in uris.items():
        r = results.get(name)
        models.append({
            "name": name,
            "artifact_uri": uri,
            "parameters": int(r.parameters) if r and r.parameters else flow["parameters"].get(name, 0),
            "size_bytes": int(r.size_bytes) if r else artifacts.size_bytes(uri),
            "accuracy": r.accuracy if r else None,
            "retention": r.retention if r else None,
            "latency_p50_ms": r.latency_p50_ms if r else None,
            "latency_p95_ms": r.latency_p95_ms if r else None,
            "tokens_per_second": r.tokens_per_second if r else None,
            "memory_bytes": int(r.memory_bytes) if r else None,
        })
    by_name = {m["name"]: m for m in models}
    teacher, student, int4 = by_name["teacher"], by_name["student"], by_name["student-int4"]
    headline = {
        "parameter_reduction": _ratio(teacher["parameters"], student["parameters"]),
        "latency_reduction_int4_vs_teacher": _ratio(teacher["latency_p50_ms"] or 0, int4["latency_p50_ms"] or 0),
        "memory_reduction_int4_vs_teacher": _ratio(teacher["memory_bytes"] or 0, int4["memory_bytes"] or 0),
        "size_reduction_int4_vs_teacher": _ratio(teacher["size_bytes"], int4["size_bytes"]),
        "retention_student": student["retention"],
        "retention_int4": int4["retention"],
    }
    lineage = [{"kind": m.kind, "id": m.id, "uri": m.uri} for m in artifacts.lineage(flow["deployment_artifact"])]
    verdict = evaluation.verdict
    checked = artifacts.read_manifest(flow["int4_uri"]).extra.get("verification", {})
    verification = {k: v for k, v in checked.items() if k != "prompts"}
    verification["num_prompts"] = len(checked.get("prompts", []))
    report = {
        "wall_seconds": round(flow["total_seconds"], 1),
        "flow_seconds": round(flow["wall_seconds"], 1),
        "trace_id": flow["trace_id"],
        "trace_spans_by_service": flow["trace_spans"],
        "models": models,
        "headline": headline,
        "gate": {"passed": verdict.passed, "evaluated": verdict.evaluated, "reasons": list(verdict.reasons)},
        "evaluation_report_uri": evaluation.status.output.uri,
        "dataset_uri": flow["dataset_uri"],
        "lineage_of_int4_deployment": lineage,
        "rollout": flow.get("rollout", {}),
        "int4_verification": verification,
    }
    lines = [
        "# slmops demo: teacher -> student -> int4 student",
        "",
        "Task: two-digit addition (`23+45=` -> `68`), exact-match accuracy on "
        f"{int(evaluation.results[0].num_prompts) if evaluation.results else 0} held-out prompts.",
        "The teacher was trained here from scratch: no pretrained weights can be downloaded on this machine.",
        "",
        "| model | parameters | size on disk | accuracy | retention | p50 latency | p95 latency | tokens/s | memory (RSS) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in models:
        lines.append(
            f"| {m['name']} | {m['parameters']:,} | {_mb(m['size_bytes'])} | "
            f"{(m['accuracy'] or 0):.1%} | {(m['retention'] or 0):.1%} | {(m['latency_p50_ms'] or 0):.1f} ms | "
            f"{(m['latency_p95_ms'] or 0):.1f} ms | {(m['tokens_per_second'] or 0):.0f} | "
            f"{_mb(m['memory_bytes'] or 0)} |"
        )
    lines += [
        "",
        f"- Student is {_x(headline['parameter_reduction'])} smaller than the teacher in parameters.",
        f"- Per-response latency (p50): int4 student {_x(headline['latency_reduction_int4_vs_teacher'])} faster than the teacher.",
        f"- Predictor memory (RSS): int4 student {_x(headline['memory_reduction_int4_vs_teacher'])} less than the teacher.",
        f"- Size on disk: int4 student {_x(headline['size_reduction_int4_vs_teacher'])} smaller than the teacher.",
        f"- Retention of the teacher's accuracy: student {(student['retention'] or 0):.1%}, "
        f"int4 student {(int4['retention'] or 0):.1%}.",
        f"- Quality gate (int4 student keeps >= 50% of the teacher's accuracy): "
        f"{'passed' if verdict.passed else 'FAILED'}" + (f" ({'; '.join(verdict.reasons)})" if verdict.reasons else ""),
        _rollout_line(flow.get("rollout", {})),
        _verification_line(verification),
        f"- Wall time: {report['wall_seconds']:.0f} s in all; trace id `{flow['trace_id']}` "
        f"with spans from {', '.join(f'{k} ({v})' for k, v in flow['trace_spans'].items())}.",
        f"- Full evaluation report (with plot): {evaluation.status.output.uri}",
        "",
        "Lineage of the int4 revision:",
        "",
        *[f"{'  ' * i}- {entry['kind']}: {entry['uri']}" for i, entry in enumerate(lineage)],
        "",
    ]
    markdown = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown)
    ok = bool(headline["parameter_reduction"] and headline["parameter_reduction"] >= 5)
    return {"markdown": markdown, "ok": ok, "report": report}


def _verification_line(v: dict) -> str:
    """The int4 conversion's proof against the student, from its manifest."""
    if not v or "token_agreement" not in v:
        return "- Conversion: not verified (" + str(v.get("skipped", "no figures in the manifest")) + ")."
    t = v["thresholds"]
    return (
        f"- Conversion verified against the student on {v.get('num_prompts', 0)} "
        f"{v.get('prompt_source', 'prompts')}: greedy token agreement {v['token_agreement']:.1%} "
        f"(min {t['min_token_agreement']:.0%}), logits relative error {v['logits_rel_error']:.3g} "
        f"(max {t['max_logits_rel_error']:g}), KL {v['mean_kl']:.3g} (max {t['max_kl']:g})."
    )
