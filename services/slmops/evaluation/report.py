"""From measurements to results, a gate verdict, and the report files.

A report folder holds `report.json` (everything, machine-readable),
`report.md` (tables readable at a glance, each target's headline ratios
against the reference, the verdict), `report.png` (accuracy and p50 latency
per target), which report.md shows, and `report.html`: one self-contained page
with the tables and three plots (quality against size, latency distributions,
tokens/s against concurrency) that reads offline.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any

import fsspec
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from slmops.api.v1 import evaluation_pb2
from slmops.evaluation.client import Level, Measurement
from slmops.evaluation.config import RETENTION_METRICS, GateConfig
from slmops.evaluation.formats import count_text, metric_text, size_text
from slmops.evaluation.judge import markdown as judge_markdown

_PYTHON_TYPES = {
    FieldDescriptor.CPPTYPE_DOUBLE: float,
    FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_BOOL: bool,
    FieldDescriptor.CPPTYPE_STRING: str,
}


def _fields_of(message: type[Message]) -> list[tuple[str, Any, Any]]:
    """A message's scalar, repeated and map fields as dataclass fields with the proto's zero defaults."""
    fields: list[tuple[str, Any, Any]] = []
    for f in message.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = _PYTHON_TYPES[f.message_type.fields_by_name["value"].cpp_type]
            fields.append((f.name, dict[str, value], field(default_factory=dict)))
        elif f.is_repeated:
            fields.append((f.name, list[_PYTHON_TYPES[f.cpp_type]], field(default_factory=list)))
        else:
            kind = _PYTHON_TYPES[f.cpp_type]
            fields.append((f.name, kind, field(default=kind())))
    return fields


def _ok(self: Any) -> bool:
    return self.status == "ok"


# One target's result: the fields of the API's TargetResult message (evaluation.proto, the one
# definition), then what only the report holds: notes, the per-request timings and the sweep.
TargetResult = make_dataclass(
    "TargetResult",
    [
        *_fields_of(evaluation_pb2.TargetResult),
        ("notes", list[str], field(default_factory=list)),
        ("latencies_ms", list[float], field(default_factory=list)),  # per request, lowest concurrency
        ("ttft_ms", list[float], field(default_factory=list)),
        ("tpot_ms", list[float], field(default_factory=list)),
        ("sweep", list[dict[str, Any]], field(default_factory=list)),
        ("judge", dict[str, Any], field(default_factory=dict)),  # the LLM judge's summary (judge.summary)
    ],
    namespace={"ok": property(_ok), "__module__": __name__},
)


@dataclass
class Verdict:
    evaluated: bool
    passed: bool
    reasons: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks; 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 and mean of a list of timings (zeros when empty)."""
    mean = sum(values) / len(values) if values else 0.0
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "mean": mean}  # fmt: skip


def level_summary(level: Level) -> dict[str, Any]:
    """One sweep level: throughput over its wall time, latency and TTFT percentiles."""
    wall = level.wall_s
    return {
        "concurrency": level.concurrency,
        "requests": level.requests,
        "errors": level.errors,
        "tokens_per_second": level.tokens / wall if wall > 0 else 0.0,
        "requests_per_second": (level.requests - level.errors) / wall if wall > 0 else 0.0,
        "latency_ms": spread(level.latencies_ms),
        "ttft_ms": spread(level.ttft_ms),
    }


def summarize(m: Measurement) -> TargetResult:
    """Quality, latency percentiles and decode speed of one target (retention is set later).

    tokens_per_second is one request's decode speed, unloaded: completion tokens over the time
    the requests took at the lowest concurrency; the sweep gives throughput under load."""
    seconds = sum(m.latencies_ms) / 1000.0
    tokens = sum(m.completion_tokens)
    accuracy = (sum(m.correct) / len(m.correct)) if m.correct else 0.0
    return TargetResult(
        name=m.name,
        accuracy=accuracy,
        latency_p50_ms=percentile(m.latencies_ms, 50),
        latency_p95_ms=percentile(m.latencies_ms, 95),
        tokens_per_second=(tokens / seconds) if seconds > 0 else 0.0,
        size_bytes=m.size_bytes,
        memory_bytes=m.memory_bytes,
        parameters=m.parameters,
        retention=0.0,
        model_uri=m.model_uri,
        num_prompts=len(m.correct),
        notes=list(m.notes),
        status=m.status,
        reason=m.reason,
        latency_p99_ms=percentile(m.latencies_ms, 99),
        ttft_p50_ms=percentile(m.ttft_ms, 50),
        ttft_p95_ms=percentile(m.ttft_ms, 95),
        tpot_p50_ms=percentile(m.tpot_ms, 50),
        quality={"accuracy": accuracy, **m.quality} if m.status == "ok" else {},
        perplexity=m.perplexity,
        latencies_ms=[round(v, 3) for v in m.latencies_ms],
        ttft_ms=[round(v, 3) for v in m.ttft_ms],
        tpot_ms=[round(v, 3) for v in m.tpot_ms],
        sweep=[level_summary(level) for level in m.sweep],
        judge=dict(m.judge),
    )


def set_retention(results: list[TargetResult], reference: str) -> None:
    """Per quality metric (higher is better; perplexity is not one): value / the reference's
    value. `retention` is accuracy's (0 when the reference scored 0, or failed)."""
    ref = next(r for r in results if r.name == reference)
    if not ref.ok:
        for result in results:
            if result.ok:
                result.notes.append(f"reference {reference} failed: no retention ({ref.reason})")
        return
    for result in results:
        if not result.ok:
            continue
        result.retentions = {
            metric: value / ref.quality[metric]
            for metric, value in result.quality.items()
            if metric in RETENTION_METRICS and ref.quality.get(metric, 0) > 0
        }
        result.retention = result.retentions.get("accuracy", 0.0)
        if ref.accuracy == 0 and result is ref:
            result.notes.append("reference accuracy is 0: retention is undefined and reported as 0")


EPSILON = 1e-9  # ratios like 0.6 / 0.8 must meet a threshold of 0.75


def judge(gate: GateConfig | None, results: list[TargetResult]) -> Verdict:
    """The gate's verdict on its candidate: one reason per checked threshold."""
    if gate is None:
        return Verdict(evaluated=False, passed=False, reasons=["no gate configured"])
    c = next(r for r in results if r.name == gate.candidate)
    if not c.ok:
        return Verdict(True, False, [f"{c.name}: FAILED: it could not be evaluated: {c.reason}"])
    checks: list[tuple[bool, str]] = []
    if gate.min_retention:
        ok = c.retention >= gate.min_retention - EPSILON
        checks.append((ok, f"retention {c.retention:.3f} {'>=' if ok else '<'} min {gate.min_retention:.3f}"))
    if gate.min_accuracy:
        ok = c.accuracy >= gate.min_accuracy - EPSILON
        checks.append((ok, f"accuracy {c.accuracy:.3f} {'>=' if ok else '<'} min {gate.min_accuracy:.3f}"))
    if gate.max_latency_p95_ms:
        ok = c.latency_p95_ms <= gate.max_latency_p95_ms + EPSILON
        sign = "<=" if ok else ">"
        checks.append(
            (
                ok,
                f"latency p95 {c.latency_p95_ms:.1f} ms {sign} max {gate.max_latency_p95_ms:.1f} ms",
            )
        )
    for metric, minimum in sorted(gate.min_retention_by_metric.items()):
        if not minimum:
            continue
        value = c.retentions.get(metric)
        if value is None:
            why = "not measured, or the reference scored 0 or failed"
            if metric == "judge":  # the judge says why it gave no mean
                why = (
                    "; ".join(f"{r.name}: {r.judge['error']}" for r in results if r.judge.get("error")) or why
                )
            checks.append((False, f"retention of {metric} unknown ({why}) < min {minimum:.3f}"))
        else:
            ok = value >= minimum - EPSILON
            checks.append((ok, f"retention of {metric} {value:.3f} {'>=' if ok else '<'} min {minimum:.3f}"))
    if gate.min_tokens_per_second:
        ok = c.tokens_per_second >= gate.min_tokens_per_second - EPSILON
        checks.append((ok, f"tokens/s {c.tokens_per_second:.1f} {'>=' if ok else '<'} min "
                           f"{gate.min_tokens_per_second:.1f}"))  # fmt: skip
    if not checks:
        return Verdict(True, True, [f"{c.name}: no thresholds set"])
    passed = all(ok for ok, _ in checks)
    return Verdict(True, passed, [f"{c.name}: {'ok' if ok else 'FAILED'}: {text}" for ok, text in checks])


def _ratio(reference: float, value: float) -> float | None:
    return (reference / value) if reference > 0 and value > 0 else None


def headlines(result: TargetResult, reference: TargetResult) -> dict[str, float | None]:
    """How much smaller/faster a target is than the reference (reference / target), and retention."""
    return {
        "latency_reduction": _ratio(reference.latency_p50_ms, result.latency_p50_ms),
        "memory_reduction": _ratio(reference.memory_bytes, result.memory_bytes),
        "size_reduction": _ratio(reference.size_bytes, result.size_bytes),
        "retention": result.retention,
    }


# -- files --------------------------------------------------------------------------


def _factor(value: float | None) -> str:
    """A reference/target ratio in words: '2.50x lower (60% less)'."""
    if value is None:
        return "n/a"
    if value >= 1:
        return f"{value:.2f}x lower ({1 - 1 / value:.0%} less)"
    return f"{1 / value:.2f}x higher ({1 / value - 1:.0%} more)"


def _quality_cell(result: TargetResult, metric: str) -> str:
    value = result.quality.get(metric)
    if value is None:
        return "n/a"
    text = metric_text(metric, value)
    retention = result.retentions.get(metric)
    return f"{text} ({retention:.0%})" if retention is not None else text


def quality_metrics(results: list[TargetResult]) -> list[str]:
    """The quality metrics measured, accuracy first, in a stable order."""
    seen = {metric for r in results for metric in r.quality}
    return [m for m in RETENTION_METRICS if m in seen]


def markdown(
    results: list[TargetResult],
    verdict: Verdict,
    *,
    reference: str,
    metric: str,
    dataset_uri: str,
    figure: str = "report.png",
    judge_model: str = "",
) -> str:
    ref = next(r for r in results if r.name == reference)
    ok = [r for r in results if r.ok]
    metrics = quality_metrics(ok)
    prompts = max((r.num_prompts for r in ok), default=0)
    lines = [
        "# Evaluation report",
        "",
        f"Dataset: `{dataset_uri}` ({prompts} prompts), accuracy: `{metric}`, reference: **{reference}**.",
        "Quality cells show the value and, in brackets, its retention against the reference. "
        "The full report with plots is report.html.",
        "",
        "| target | " + " | ".join(metrics + ["perplexity"]) + " |",
        "| --- |" + " ---: |" * (len(metrics) + 1),
    ]
    for r in ok:
        cells = [_quality_cell(r, m) for m in metrics] + [f"{r.perplexity:.2f}" if r.perplexity else "n/a"]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| target | accuracy | retention | p50 ms | p95 ms | p99 ms | TTFT p50 ms | TPOT p50 ms | tokens/s | size "
        "| memory | parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ok:
        lines.append(
            f"| {r.name} | {r.accuracy:.1%} | {r.retention:.1%} | {r.latency_p50_ms:.1f} | {r.latency_p95_ms:.1f} "
            f"| {r.latency_p99_ms:.1f} | {r.ttft_p50_ms:.1f} | {r.tpot_p50_ms:.2f} | {r.tokens_per_second:.1f} "
            f"| {size_text(r.size_bytes)} | {size_text(r.memory_bytes)} | {count_text(r.parameters)} |"
        )
    levels = sorted({level["concurrency"] for r in ok for level in r.sweep})
    if len(levels) > 1:
        lines += ["", "Throughput under load: tokens/s (latency p95 ms) at each concurrency.", "",
                  "| target | " + " | ".join(f"concurrency {c}" for c in levels) + " |",
                  "| --- |" + " ---: |" * len(levels)]  # fmt: skip
        for r in ok:
            by_level = {level["concurrency"]: level for level in r.sweep}
            cells = [f"{by_level[c]['tokens_per_second']:.1f} ({by_level[c]['latency_ms']['p95']:.0f})"
                     if c in by_level else "n/a" for c in levels]  # fmt: skip
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += judge_markdown([{"name": r.name, "judge": r.judge, "retention": r.retentions} for r in ok if r.judge],
                            judge_model)  # fmt: skip
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "## Failed targets", "", *[f"- **{r.name}**: {r.reason}" for r in failed]]
    lines += ["", f"## Against the reference ({reference})", ""]
    if ref.ok:
        for r in ok:
            if r.name == reference:
                continue
            h = headlines(r, ref)
            lines.append(
                f"- **{r.name}**: retention {r.retention:.1%}; latency p50 {_factor(h['latency_reduction'])}; "
                f"memory {_factor(h['memory_reduction'])}; size {_factor(h['size_reduction'])}"
            )
        if len(ok) == 1:
            lines.append("- (only the reference was evaluated)")
    else:
        lines.append(f"- the reference failed: {ref.reason}")
    lines += ["", "## Quality gate", ""]
    if verdict.evaluated:
        lines.append(f"**{'PASSED' if verdict.passed else 'FAILED'}**")
        lines += [""] + [f"- {reason}" for reason in verdict.reasons]
    else:
        lines.append("No gate configured.")
    lines += ["", f"![accuracy and p50 latency per target]({figure})", ""]
    notes = [f"- {r.name}: {note}" for r in results for note in r.notes]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def figure_png(results: list[TargetResult]) -> bytes:
    """A PNG with two bar charts: accuracy and p50 latency per target."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    results = [r for r in results if r.ok]
    names = [r.name for r in results]
    fig = Figure(figsize=(8, 3.2), dpi=100)
    ax_acc, ax_lat = fig.subplots(1, 2)
    ax_acc.bar(names, [r.accuracy * 100 for r in results], color="#4c72b0")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.set_title("Accuracy")
    ax_lat.bar(names, [r.latency_p50_ms for r in results], color="#dd8452")
    ax_lat.set_ylabel("p50 latency (ms)")
    ax_lat.set_title("Latency (p50)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def document(
    results: list[TargetResult],
    verdict: Verdict,
    *,
    reference: str,
    metric: str,
    dataset_uri: str,
    candidate: str = "",
    judge_model: str = "",
) -> dict[str, Any]:
    """report.json: every result in full, the verdict, the headlines, and what the HTML page plots."""
    ref = next(r for r in results if r.name == reference)
    ok = [r for r in results if r.ok]
    targets = []
    for r in results:
        entry: dict[str, Any] = {"name": r.name, "status": r.status, "reason": r.reason, "model_uri": r.model_uri,
                                 "notes": list(r.notes)}  # fmt: skip
        if r.ok:
            entry.update(
                size_bytes=r.size_bytes, parameters=r.parameters, memory_bytes=r.memory_bytes,
                quality=dict(r.quality), retention=dict(r.retentions), perplexity=r.perplexity or None,
                latency_ms=spread(r.latencies_ms), ttft_ms=spread(r.ttft_ms), tpot_ms=spread(r.tpot_ms),
                tokens_per_second=r.tokens_per_second, latencies_ms=list(r.latencies_ms), sweep=list(r.sweep),
            )  # fmt: skip
            if r.judge:
                entry["judge"] = dict(r.judge)
        targets.append(entry)
    return {
        "title": "Evaluation report",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reference": reference,
        "candidate": candidate,
        "metric": metric,
        "primary_metric": "accuracy",
        "quality_metrics": quality_metrics(ok),
        "concurrency_levels": sorted({level["concurrency"] for r in ok for level in r.sweep}),
        "dataset_uri": dataset_uri,
        "judge_model": judge_model,
        "num_prompts": max((r.num_prompts for r in ok), default=0),
        "targets": targets,
        "results": [asdict(r) for r in results],
        "verdict": asdict(verdict),
        "headlines": {r.name: headlines(r, ref) for r in ok if r.name != reference} if ref.ok else {},
    }


def write_report(
    uri: str,
    results: list[TargetResult],
    verdict: Verdict,
    *,
    reference: str,
    metric: str,
    dataset_uri: str,
    candidate: str = "",
    judge_model: str = "",
) -> None:
    """Write report.json, report.md, report.png and report.html under uri (any fsspec URI)."""
    from slmops.evaluation.html import render_html

    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    doc = document(results, verdict, reference=reference, metric=metric, dataset_uri=dataset_uri,
                   candidate=candidate, judge_model=judge_model)  # fmt: skip
    with fs.open(f"{root}/report.json", "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    with fs.open(f"{root}/report.md", "w", encoding="utf-8") as fh:
        fh.write(markdown(results, verdict, reference=reference, metric=metric, dataset_uri=dataset_uri,
                          judge_model=judge_model))  # fmt: skip
    with fs.open(f"{root}/report.png", "wb") as fh:
        fh.write(figure_png(results))
    with fs.open(f"{root}/report.html", "w", encoding="utf-8") as fh:
        fh.write(render_html(doc))
