"""How report.md and report.html write figures: sizes, counts and quality values."""

from __future__ import annotations

from typing import Any

PERCENT_METRICS = ("accuracy", "rouge_l", "semantic_similarity")  # shown as percentages


def size_text(n: Any) -> str:
    """Bytes in words: '2.3 MB'; 'n/a' when unknown (0)."""
    n = int(n or 0)
    if not n:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def count_text(n: Any) -> str:
    """A parameter count: '90.8K'; 'n/a' when unknown (0)."""
    n = int(n or 0)
    if not n:
        return "n/a"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def metric_text(metric: str, value: float | None) -> str:
    """A quality value: a percentage for 0..1 metrics, the judge's mean rating out of 10, else two
    decimals (chrF, BLEU)."""
    if value is None:
        return "n/a"
    if metric == "judge":
        return f"{value:.2f}/10"
    return f"{value:.1%}" if metric in PERCENT_METRICS else f"{value:.2f}"
