"""Prometheus metrics of the predictor, served by KServe's `/metrics` route.

Everything registers in prometheus_client's default registry, which KServe
exposes. Evaluation reads `slmops_predictor_peak_resident_memory_bytes` (the
process's high-water mark), else `process_resident_memory_bytes` (the process
collector), and the token counters below.

Label values come from a closed set, never from what a client sends: the
endpoint, HTTP status code and rejection reason must be known ones, and the
model one of the first MAX_MODELS names counted (a predictor serves one model
and its adapters, and its routes count only names it serves); anything else is
counted as `other`, so no client can grow the number of series.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, ProcessCollector

OTHER = "other"  # the label value of anything outside the known set
MAX_MODELS = 32
ENDPOINTS = frozenset({"completions", "chat", "infer"})
CODES = frozenset({"200", "400", "401", "403", "404", "408", "413", "422", "429", "499", "500", "503", "504"})
REASONS = frozenset({"queue_full", "body_too_large", "unauthorized", "timeout"})
_models: set[str] = set()
_models_lock = threading.Lock()


def _model(name: str) -> str:
    with _models_lock:
        if name not in _models and len(_models) < MAX_MODELS:
            _models.add(name)
        return name if name in _models else OTHER


def _closed(labelname: str, value: Any) -> str:
    """value as a label value of labelname: itself when known, else OTHER."""
    value = str(value)
    if labelname == "model":
        return _model(value)
    known = {"endpoint": ENDPOINTS, "code": CODES, "reason": REASONS}.get(labelname)
    return value if known is None or value in known else OTHER


class _Closed:
    """A labelled metric whose label values are mapped into the closed sets above."""

    _labelnames: tuple[str, ...]

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            return super().labels(**{k: _closed(k, v) for k, v in named.items()})  # type: ignore[misc]
        return super().labels(*(_closed(k, v) for k, v in zip(self._labelnames, values, strict=False)))  # type: ignore[misc]


class ClosedCounter(_Closed, Counter):
    pass


class ClosedHistogram(_Closed, Histogram):
    pass


REQUESTS = ClosedCounter(
    "slmops_predictor_requests",
    "Requests answered, by model, endpoint and HTTP status code.",
    ["model", "endpoint", "code"],
)
LATENCY = ClosedHistogram(
    "slmops_predictor_request_seconds",
    "Time from request to last token, by model and endpoint.",
    ["model", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FIRST_TOKEN = ClosedHistogram(
    "slmops_predictor_time_to_first_token_seconds",
    "Time from request to the first generated piece of text (streamed or not).",
    ["model", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PEAK_MEMORY = Gauge(
    "slmops_predictor_peak_resident_memory_bytes",
    "The highest resident memory of the predictor process so far (getrusage ru_maxrss).",
)


def _peak_rss() -> float:
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


PEAK_MEMORY.set_function(_peak_rss)
PROMPT_TOKENS = ClosedCounter("slmops_predictor_prompt_tokens", "Prompt tokens processed.", ["model"])
GENERATED_TOKENS = ClosedCounter("slmops_predictor_generated_tokens", "Tokens generated.", ["model"])


def ensure_process_collector() -> None:
    """Make sure process_* metrics (resident memory, CPU seconds) are in the default registry."""
    try:
        ProcessCollector(registry=REGISTRY)
    except ValueError:
        pass  # already registered (prometheus_client does it by default on Linux)


def record(
    model: str,
    endpoint: str,
    code: int,
    seconds: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> None:
    """Count one finished request."""
    REQUESTS.labels(model, endpoint, str(code)).inc()
    LATENCY.labels(model, endpoint).observe(seconds)
    if prompt_tokens:
        PROMPT_TOKENS.labels(model).inc(prompt_tokens)
    if completion_tokens:
        GENERATED_TOKENS.labels(model).inc(completion_tokens)


def rss_bytes() -> int:
    """Resident memory of this process."""
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


# The scheduler's view: what runs, what waits, what is turned away.
IN_FLIGHT = Gauge("slmops_predictor_in_flight", "Sequences being decoded now.")
QUEUE_DEPTH = Gauge("slmops_predictor_queue_depth", "Requests waiting for a decoding slot.")
REJECTED = ClosedCounter(
    "slmops_predictor_rejected",
    "Requests turned away or cut short, by reason (queue_full, body_too_large, unauthorized, timeout).",
    ["reason"],
)
BATCH_SIZE = Histogram(
    "slmops_predictor_batch_size",
    "Sequences advanced together in one decoding step.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
COHORTS_STARTED = Counter("slmops_predictor_cohorts_started", "Batches of sequences started together.")
COHORTS_MERGED = Counter(
    "slmops_predictor_cohorts_merged",
    "Young batches restarted to take requests that arrived just after them.",
)
TIME_PER_TOKEN = ClosedHistogram(
    "slmops_predictor_time_per_output_token_seconds",
    "Time per generated token after the first, per request.",
    ["model", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
)
TOKENS_PER_SECOND = Gauge(
    "slmops_predictor_tokens_per_second",
    "Tokens generated per second across all requests, over the last few seconds.",
)
