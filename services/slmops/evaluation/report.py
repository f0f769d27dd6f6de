"""From measurements to results, a gate verdict, and the report files.

A report folder holds `report.json` (everything, machine-readable),
`report.md` (a table readable at a glance, each target's headline ratios
against the reference, the verdict) and `report.png` (accuracy and p50
latency per target), which report.md shows.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from slmops.evaluation.client import Measurement
from slmops.evaluation.spec import GateConfig


@dataclass
class TargetResult:
    name: str
    accuracy: float
    latency_p50_ms: float
    latency_p95_ms: float
    tokens_per_second: float
    size_bytes: int
    memory_bytes: int
    parameters: int
    retention: float
    model_uri: str
    num_prompts: int
    notes: list[str] = field(default_factory=list)


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


def summarize(m: Measurement) -> TargetResult:
    """Accuracy, latency percentiles and decode speed of one target (retention is set later)."""
    seconds = sum(m.latencies_ms) / 1000.0
    tokens = sum(m.completion_tokens)
    return TargetResult(
        name=m.name,
        accuracy=(sum(m.correct) / len(m.correct)) if m.correct else 0.0,
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
    )


def set_retention(results: list[TargetResult], reference: str) -> None:
    """retention = accuracy / the reference's accuracy (0 when the reference scored 0)."""
    ref = next(r for r in results if r.name == reference)
    for result in results:
        result.retention = (result.accuracy / ref.accuracy) if ref.accuracy > 0 else 0.0
        if ref.accuracy == 0 and result is ref:
            result.notes.append("reference accuracy is 0: retention is undefined and reported as 0")


EPSILON = 1e-9  # ratios like 0.6 / 0.8 must meet a threshold of 0.75


def judge(gate: GateConfig | None, results: list[TargetResult]) -> Verdict:
    """The gate's verdict on its candidate: one reason per checked threshold."""
    if gate is None:
        return Verdict(evaluated=False, passed=False, reasons=["no gate configured"])
    c = next(r for r in results if r.name == gate.candidate)
    checks: list[tuple[bool, str]] = []
    if gate.min_retention:
        ok = c.retention >= gate.min_retention - EPSILON
        checks.append(
            (ok, f"retention {c.retention:.3f} {'>=' if ok else '<'} min {gate.min_retention:.3f}")
        )
    if gate.min_accuracy:
        ok = c.accuracy >= gate.min_accuracy - EPSILON
        checks.append(
            (ok, f"accuracy {c.accuracy:.3f} {'>=' if ok else '<'} min {gate.min_accuracy:.3f}")
        )
    if gate.max_latency_p95_ms:
        ok = c.latency_p95_ms <= gate.max_latency_p95_ms + EPSILON
        sign = "<=" if ok else ">"
        checks.append(
            (
                ok,
                f"latency p95 {c.latency_p95_ms:.1f} ms {sign} max {gate.max_latency_p95_ms:.1f} ms",
            )
        )
    if not checks:
        return Verdict(True, True, [f"{c.name}: no thresholds set"])
    passed = all(ok for ok, _ in checks)
    return Verdict(
        True, passed, [f"{c.name}: {'ok' if ok else 'FAILED'}: {text}" for ok, text in checks]
    )


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


def _bytes(n: int) -> str:
    if not n:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    if not n:
        return "n/a"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _factor(value: float | None) -> str:
    """A reference/target ratio in words: '2.50x lower (60% less)'."""
    if value is None:
        return "n/a"
    if value >= 1:
        return f"{value:.2f}x lower ({1 - 1 / value:.0%} less)"
    return f"{1 / value:.2f}x higher ({1 / value - 1:.0%} more)"


def markdown(
    results: list[TargetResult],
    verdict: Verdict,
    *,
    reference: str,
    metric: str,
    dataset_uri: str,
    figure: str = "report.png",
) -> str:
    ref = next(r for r in results if r.name == reference)
    lines = [
        "# Evaluation report",
        "",
        f"Dataset: `{dataset_uri}` ({ref.num_prompts} prompts), metric: `{metric}`, reference: **{reference}**.",
        "",
        "| target | accuracy | retention | p50 ms | p95 ms | tokens/s | size | memory | parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.accuracy:.1%} | {r.retention:.1%} | {r.latency_p50_ms:.1f} | {r.latency_p95_ms:.1f} "
            f"| {r.tokens_per_second:.1f} | {_bytes(r.size_bytes)} | {_bytes(r.memory_bytes)} | {_count(r.parameters)} |"
        )
    lines += ["", f"## Against the reference ({reference})", ""]
    for r in results:
        if r.name == reference:
            continue
        h = headlines(r, ref)
        lines.append(
            f"- **{r.name}**: retention {r.retention:.1%}; latency p50 {_factor(h['latency_reduction'])}; "
            f"memory {_factor(h['memory_reduction'])}; size {_factor(h['size_reduction'])}"
        )
    if len(results) == 1:
        lines.append("- (only the reference was evaluated)")
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


def write_report(
    uri: str,
    results: list[TargetResult],
    verdict: Verdict,
    *,
    reference: str,
    metric: str,
    dataset_uri: str,
) -> None:
    """Write report.json, report.md and report.png under uri (any fsspec URI)."""
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    ref = next(r for r in results if r.name == reference)
    document: dict[str, Any] = {
        "reference": reference,
        "metric": metric,
        "dataset_uri": dataset_uri,
        "results": [asdict(r) for r in results],
        "verdict": asdict(verdict),
        "headlines": {r.name: headlines(r, ref) for r in results if r.name != reference},
    }
    with fs.open(f"{root}/report.json", "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
    with fs.open(f"{root}/report.md", "w", encoding="utf-8") as fh:
        fh.write(
            markdown(results, verdict, reference=reference, metric=metric, dataset_uri=dataset_uri)
        )
    with fs.open(f"{root}/report.png", "wb") as fh:
        fh.write(figure_png(results))
