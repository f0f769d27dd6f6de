"""A realistic evaluation report document (report.json's shape) for tests of the HTML page."""

from __future__ import annotations

import random
from typing import Any

from slmops.evaluation.report import spread

METRICS = ("accuracy", "rouge_l", "chrf", "bleu", "semantic_similarity")
LEVELS = (1, 4, 16)


def _latencies(rng: random.Random, median_ms: float, n: int = 40) -> list[float]:
    """Log-normal request times with a few slow stragglers, as a real server gives."""
    return [round(median_ms * rng.lognormvariate(0, 0.18) * (2.5 if rng.random() < 0.05 else 1), 3)
            for _ in range(n)]  # fmt: skip


def _sweep(rng: random.Random, latencies: list[float], tps: float, saturation: float) -> list[dict[str, Any]]:
    """Throughput grows with concurrency until the server saturates; latency grows with the queue."""
    levels = []
    for c in LEVELS:
        speedup = c / (1 + (c - 1) * saturation)
        under_load = [v * c / speedup for v in latencies]
        levels.append({"concurrency": c, "requests": 40, "errors": 0, "tokens_per_second": tps * speedup,
                       "requests_per_second": 1000 * c / (sum(under_load) / len(under_load)),
                       "latency_ms": spread(under_load), "ttft_ms": spread([v * 0.2 for v in under_load])})  # fmt: skip
    return levels


def _target(name: str, seed: int, *, size: int, parameters: int, median_ms: float, tps: float,
            saturation: float, quality: dict[str, float], perplexity: float | None) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    latencies = _latencies(rng, median_ms)
    return {
        "name": name, "status": "ok", "reason": "", "model_uri": f"file:///artifacts/models/{name}",
        "size_bytes": size, "parameters": parameters, "memory_bytes": int(size * 1.3) + 420_000_000,
        "quality": quality, "retention": {}, "perplexity": perplexity,
        "latency_ms": spread(latencies), "ttft_ms": spread([v * 0.2 for v in latencies]),
        "tpot_ms": spread([v * 0.8 / 64 for v in latencies]), "tokens_per_second": tps,
        "latencies_ms": latencies, "sweep": _sweep(rng, latencies, tps, saturation), "notes": [],
    }  # fmt: skip


def sample_document() -> dict[str, Any]:
    """Three measured targets (a 494M-parameter teacher, its 135M student in fp16 and in int4), one
    unreachable target, and a gate the int4 student fails."""
    teacher = _target("teacher", 1, size=988_000_000, parameters=494_000_000, median_ms=410.0, tps=156.0,
                      saturation=0.35, perplexity=3.21,
                      quality={"accuracy": 0.72, "rouge_l": 0.81, "chrf": 63.4, "bleu": 41.2,
                               "semantic_similarity": 0.91})  # fmt: skip
    student = _target("student", 2, size=270_000_000, parameters=135_000_000, median_ms=160.0, tps=400.0,
                      saturation=0.2, perplexity=4.05,
                      quality={"accuracy": 0.6, "rouge_l": 0.74, "chrf": 57.9, "bleu": 35.0,
                               "semantic_similarity": 0.87})  # fmt: skip
    int4 = _target("student-int4", 3, size=95_000_000, parameters=135_000_000, median_ms=95.0, tps=674.0,
                   saturation=0.15, perplexity=None,
                   quality={"accuracy": 0.295, "rouge_l": 0.52, "chrf": 41.0, "bleu": 19.3,
                            "semantic_similarity": 0.74})  # fmt: skip
    int4["notes"].append("perplexity not measured: the ONNX runtime gives no logits for the prompt")
    for target in (teacher, student, int4):
        target["retention"] = {m: target["quality"][m] / teacher["quality"][m] for m in METRICS}
    offline = {"name": "offline", "status": "failed", "model_uri": "http://127.0.0.1:9/v1",
               "reason": "cannot reach http://127.0.0.1:9/v1: connection refused", "notes": []}  # fmt: skip
    return {
        "title": "Evaluation report",
        "created": "2026-11-28T22:30:00Z",
        "dataset_uri": "file:///data/held-out.jsonl",
        "num_prompts": 40,
        "reference": "teacher",
        "candidate": "student-int4",
        "metric": "exact_match",
        "primary_metric": "accuracy",
        "quality_metrics": list(METRICS),
        "concurrency_levels": list(LEVELS),
        "targets": [teacher, student, int4, offline],
        "verdict": {"evaluated": True, "passed": False,
                    "reasons": [f"student-int4: ok: latency p95 {int4['latency_ms']['p95']:.1f} ms <= max 500.0 ms",
                                f"student-int4: FAILED: retention of accuracy {int4['retention']['accuracy']:.3f} "
                                "< min 0.500"]},
    }  # fmt: skip
