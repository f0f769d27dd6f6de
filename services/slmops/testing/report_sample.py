"""A realistic evaluation report document (report.json's shape) for tests of the HTML page."""

from __future__ import annotations

import random
from typing import Any


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "mean": sum(values) / len(values)}


def _target(name: str, seed: int, size: int, params: int, base_ms: float, tps: float, accuracy: float,
            retention: float) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    latencies = [base_ms * (0.8 + rng.random() * 0.5) + (base_ms * 2 if rng.random() < 0.04 else 0) for _ in range(40)]
    quality = {"accuracy": accuracy, "rouge_l": accuracy * 1.05, "chrf": accuracy * 90, "bleu": accuracy * 70,
               "semantic_similarity": 0.5 + accuracy / 2}  # fmt: skip
    sweep = [{"concurrency": c, "requests": 40, "errors": 0, "tokens_per_second": tps * min(c, 3) ** 0.8,
              "requests_per_second": tps * min(c, 3) ** 0.8 / 5, "latency_ms": _spread([v * c ** 0.5 for v in latencies]),
              "ttft_ms": _spread([v / 3 for v in latencies])} for c in (1, 4, 16)]  # fmt: skip
    return {
        "name": name, "status": "ok", "reason": "", "model_uri": f"file:///artifacts/{name}",
        "size_bytes": size, "parameters": params, "memory_bytes": size * 3 + 150_000_000,
        "quality": quality, "retention": {k: min(1.0, retention) for k in quality}, "perplexity": 1.4 + seed / 10,
        "latency_ms": _spread(latencies), "ttft_ms": _spread([v / 3 for v in latencies]),
        "tpot_ms": _spread([v / 8 for v in latencies]), "tokens_per_second": tps,
        "latencies_ms": latencies, "sweep": sweep, "notes": [],
    }  # fmt: skip


def sample_document() -> dict[str, Any]:
    """Three measured targets of different sizes and speeds, one unreachable, and a failed gate."""
    return {
        "title": "Evaluation report",
        "created": "2026-11-28T22:30:00Z",
        "dataset_uri": "file:///data/held-out.jsonl",
        "num_prompts": 40,
        "reference": "teacher",
        "candidate": "student-int4",
        "metric": "exact_match",
        "primary_metric": "accuracy",
        "quality_metrics": ["accuracy", "rouge_l", "chrf", "bleu", "semantic_similarity"],
        "concurrency_levels": [1, 4, 16],
        "targets": [
            _target("teacher", 1, 2_300_000, 557_000, 42.0, 120.0, 0.74, 1.0),
            _target("student", 2, 380_000, 91_000, 18.0, 260.0, 0.61, 0.82),
            _target("student-int4", 3, 120_000, 91_000, 12.0, 390.0, 0.30, 0.41),
            {"name": "offline", "status": "failed", "model_uri": "",
             "reason": "target offline: cannot list models at http://127.0.0.1:9/v1: connection refused",
             "notes": []},
        ],
        "verdict": {"evaluated": True, "passed": False,
                    "reasons": ["student-int4: FAILED: retention 0.405 < min 0.500"]},
    }  # fmt: skip
