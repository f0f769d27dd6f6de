"""Prometheus metrics of the predictor, served by KServe's `/metrics` route.

Everything registers in prometheus_client's default registry, which KServe
exposes. Evaluation reads `slmops_predictor_peak_resident_memory_bytes` (the
process's high-water mark), else `process_resident_memory_bytes` (the process
collector), and the token counters below.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, ProcessCollector

REQUESTS = Counter(
    "slmops_predictor_requests",
    "Requests answered, by model, endpoint and HTTP status code.",
    ["model", "endpoint", "code"],
)
LATENCY = Histogram(
    "slmops_predictor_request_seconds",
    "Time from request to last token, by model and endpoint.",
    ["model", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FIRST_TOKEN = Histogram(
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
PROMPT_TOKENS = Counter("slmops_predictor_prompt_tokens", "Prompt tokens processed.", ["model"])
GENERATED_TOKENS = Counter("slmops_predictor_generated_tokens", "Tokens generated.", ["model"])


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
REJECTED = Counter(
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
TIME_PER_TOKEN = Histogram(
    "slmops_predictor_time_per_output_token_seconds",
    "Time per generated token after the first, per request.",
    ["model", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
)
TOKENS_PER_SECOND = Gauge(
    "slmops_predictor_tokens_per_second",
    "Tokens generated per second across all requests, over the last few seconds.",
)
