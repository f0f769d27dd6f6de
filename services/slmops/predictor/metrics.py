"""Prometheus metrics of the predictor, served by KServe's `/metrics` route.

Everything registers in prometheus_client's default registry, which KServe
exposes. Evaluation reads `process_resident_memory_bytes` (the process
collector) and the token counters below.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, Counter, Histogram, ProcessCollector

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
    "Time from request to the first streamed piece of text.",
    ["model", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
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
