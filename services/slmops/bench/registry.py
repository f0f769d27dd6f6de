"""Registered benchmarks, how they run, and the results files they produce.

A benchmark is a function returning an Outcome: the measured value, the
baseline measured in the same run, their unit, and details worth keeping. The
ratio is value / baseline. `run_benchmarks` writes

- `results.json`: {"results": [{"name", "value", "unit", "baseline", "ratio"}], "details": {name: {...}},
  "machine": {...}}
- `report.md`: the same as a table.

A benchmark that cannot run here (a missing optional tool) raises Skipped: it
gets no row, and its reason goes into `skipped` ([{"name", "reason"}]) and the report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    value: float
    baseline: float
    unit: str
    value_label: str = "value"
    baseline_label: str = "baseline"
    details: dict[str, Any] = field(default_factory=dict)


class Skipped(Exception):
    """Raised by a benchmark that cannot run on this machine; the message says why and how to enable it."""


@dataclass
class Benchmark:
    name: str
    run: Callable[[], Outcome]
    description: str = ""


REGISTRY: dict[str, Benchmark] = {}


def register(name: str, description: str = "") -> Callable[[Callable[[], Outcome]], Callable[[], Outcome]]:
    """Decorator adding a benchmark function to REGISTRY under name."""

    def add(fn: Callable[[], Outcome]) -> Callable[[], Outcome]:
        REGISTRY[name] = Benchmark(name, fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return add


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def result_row(name: str, outcome: Outcome) -> dict[str, Any]:
    ratio = outcome.value / outcome.baseline if outcome.baseline else 0.0
    return {
        "name": name,
        "value": outcome.value,
        "unit": outcome.unit,
        "baseline": outcome.baseline,
        "ratio": ratio,
    }


def markdown(document: dict[str, Any], descriptions: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        (
            f"Machine: {document['machine']['processor']}, {document['machine']['cpu_count']} CPUs, "
            f"Python {document['machine']['python']}. Ratio = value / baseline, both measured in this run."
        ),
        "",
        "| benchmark | value | baseline | unit | ratio |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for row in document["results"]:
        lines.append(
            f"| {row['name']} | {row['value']:.2f} | {row['baseline']:.2f} | {row['unit']} | "
            f"{row['ratio']:.2f}x |"
        )
    for row in document["results"]:
        details = document["details"].get(row["name"], {})
        lines += ["", f"## {row['name']}", ""]
        if descriptions.get(row["name"]):
            lines += [descriptions[row["name"]], ""]
        lines += [f"- {key}: {value}" for key, value in details.items()]
    if document.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {row['name']}: {row['reason']}" for row in document["skipped"]]
    return "\n".join(lines) + "\n"


def run_benchmarks(
    benchmarks: Iterable[Benchmark], out_dir: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run each benchmark once, write results.json and report.md under out_dir, return the document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"results": [], "details": {}, "skipped": [], "machine": machine()}
    descriptions: dict[str, str] = {}
    for bench in benchmarks:
        log(f"bench {bench.name}: running")
        started = time.perf_counter()
        try:
            outcome = bench.run()
        except Skipped as skipped:
            document["skipped"].append({"name": bench.name, "reason": str(skipped)})
            log(f"bench {bench.name}: skipped: {skipped}")
            continue
        seconds = time.perf_counter() - started
        row = result_row(bench.name, outcome)
        document["results"].append(row)
        document["details"][bench.name] = {
            outcome.value_label: outcome.value,
            outcome.baseline_label: outcome.baseline,
            **outcome.details,
            "benchmark_seconds": round(seconds, 1),
        }
        descriptions[bench.name] = bench.description
        log(
            f"bench {bench.name}: {row['value']:.2f} vs {row['baseline']:.2f} {row['unit']} "
            f"(ratio {row['ratio']:.2f}) in {seconds:.0f} s"
        )
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(document, descriptions), encoding="utf-8")
    return document
