"""Drive one target over the OpenAI API and measure it.

For each target: a few warm-up requests, then every example once at the
lowest concurrency level, streamed and greedy: its answer is checked and the
request timed (latency, time to the first token, time per output token after
it). A chat target is sent a conversation's turns, a plain one its prompt
(examples.py). Then the same requests again at each higher level of the
concurrency sweep, for throughput and latency under load. After the run, the predictor's resident
memory is read from its Prometheus `/metrics` (at most METRICS_MAX_BYTES of
it), and size on disk and parameter count come from the target's model_uri. A
target that cannot be reached is `failed` with the reason; the others are
measured all the same. Every connection passes the egress allow-list
(core/egress); the bearer token is core/endpoints' `resolve_api_key` (the key
the target names, or the platform's predictor key for one of its deployments),
sent to /metrics too, which a deployment's router guards like the rest.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from slmops.core import artifacts, egress, tracing
from slmops.core.endpoints import describe_error, openai_client, resolve_api_key
from slmops.core.errors import NotFound, Unavailable
from slmops.core.progress import Progress, null_progress
from slmops.core.spec_checks import SamplingConfig
from slmops.evaluation import metrics
from slmops.evaluation.config import TargetConfig
from slmops.evaluation.examples import Example, load_examples

__all__ = ["Example", "Measurement", "TargetClient", "load_examples", "measure_target", "scrape_memory"]

log = logging.getLogger(__name__)
MEMORY_METRIC = "process_resident_memory_bytes"
PEAK_MEMORY_METRIC = "slmops_predictor_peak_resident_memory_bytes"  # preferred: the high-water mark
METRICS_MAX_BYTES = 4 * 2**20  # a predictor's /metrics is a few kB; more is not read


@dataclass
class Timed:
    """One streamed request: its text, completion tokens and timings (ms), or its error."""

    text: str = ""
    tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    error: str = ""

    @property
    def tpot_ms(self) -> float:
        """Time per output token after the first (0 for answers of one token)."""
        return (self.latency_ms - self.ttft_ms) / (self.tokens - 1) if self.tokens > 1 else 0.0


@dataclass
class Level:
    """One level of the concurrency sweep: every prompt sent with `concurrency` in flight."""

    concurrency: int
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)


@dataclass
class Measurement:
    """Raw measurements of one target; report.py turns them into a TargetResult."""

    name: str
    model_uri: str = ""
    status: str = "ok"  # or failed, with the reason
    reason: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sweep: list[Level] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    perplexity: float = 0.0
    memory_bytes: int = 0
    size_bytes: int = 0
    parameters: int = 0
    notes: list[str] = field(default_factory=list)
    judge: dict[str, Any] = field(default_factory=dict)  # the LLM judge's summary (judge.summary)


def is_correct(expected: str, completion: str, metric: str = "exact_match", *, pattern: str = "",
               choices: list[str] | None = None) -> bool:  # fmt: skip
    """contains: expected (stripped) occurs in the completion; exact_match, normalized, regex and
    choice: as metrics.accuracy_check judges them."""
    if metric == "contains":
        return expected.strip() in completion
    kind = {"exact_match": "exact"}.get(metric, metric)
    return metrics.accuracy_check(kind, expected, completion, pattern=pattern, choices=choices)


def origin(base_url: str) -> str:
    parsed = urlparse(base_url)
    return f"{parsed.scheme}://{parsed.netloc}"


def _read_metrics(url: str, api_key: str, timeout_s: float) -> str:
    """The text of url, at most METRICS_MAX_BYTES of it (ValueError beyond), through the egress check."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "none" else {}
    with (
        egress.http_client(timeout=timeout_s) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        response.raise_for_status()
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > METRICS_MAX_BYTES:
                raise ValueError(f"more than {METRICS_MAX_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def scrape_memory(base_url: str, timeout_s: float = 5.0, api_key: str = "") -> tuple[int, str]:
    """(resident bytes, note) from <origin>/metrics; (0, why) when it cannot be read."""
    url = origin(base_url) + "/metrics"
    try:
        text = _read_metrics(url, api_key, timeout_s)
    except (httpx.HTTPError, egress.EgressRefused, ValueError) as exc:
        return 0, f"memory unknown: {url} unavailable ({type(exc).__name__})"
    values: dict[str, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (MEMORY_METRIC, PEAK_MEMORY_METRIC) and math.isfinite(sample.value):
                    values[sample.name] = int(sample.value)
    except ValueError:
        return 0, f"memory unknown: {url} is not Prometheus text"
    for name in (PEAK_MEMORY_METRIC, MEMORY_METRIC):
        if values.get(name):
            return values[name], ""
    return 0, f"memory unknown: {url} has no {MEMORY_METRIC}"


def _parameters(uri: str, depth: int = 3) -> int:
    """Parameters from a manifest's metrics, a safetensors folder, or (recursively) the parents."""
    from slmops.core.model_files import count_parameters

    try:
        manifest = artifacts.read_manifest(uri)
    except NotFound:
        manifest = None
    if manifest and manifest.metrics.get("parameters"):
        return int(manifest.metrics["parameters"])
    if uri.startswith("file://"):
        try:
            return count_parameters(artifacts.local_path(uri))
        except FileNotFoundError:
            pass
    if manifest and depth > 0:
        for parent in manifest.parents:
            count = _parameters(parent, depth - 1)
            if count:
                return count
    return 0


def model_footprint(model_uri: str) -> tuple[int, int]:
    """(size on disk in bytes, parameter count) of a model folder or artifact; zeros if unknown."""
    if not model_uri:
        return 0, 0
    uri = artifacts.to_uri(model_uri)
    return artifacts.size_bytes(uri), _parameters(uri)


class TargetClient:
    """Greedy streamed requests to one target, each timed and traced."""

    def __init__(self, target: TargetConfig, sampling: SamplingConfig, traceparent: str = ""):
        if not target.base_url:
            raise Unavailable(
                f"target {target.name}: deployment {target.deployment!r} was not resolved to a URL"
            )
        self.target = target
        self.sampling = sampling
        self.traceparent = traceparent
        self.api_key = resolve_api_key(target.api_key_env, target.base_url)
        self.client = openai_client(target.base_url, self.api_key, timeout=target.timeout_s)
        self.model = target.model or self._first_model()

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except openai.OpenAIError as exc:
            raise Unavailable(
                f"target {self.target.name}: cannot list models at {self.target.base_url}: "
                f"{describe_error(exc)}"
            ) from exc
        if not models:
            raise Unavailable(f"target {self.target.name}: {self.target.base_url} serves no model")
        return models[0].id

    def _kwargs(self) -> dict[str, Any]:
        s = self.sampling
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": s.max_tokens, "temperature": 0.0,
                                  "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        if s.stop:
            kwargs["stop"] = s.stop
        if s.seed is not None:
            kwargs["seed"] = s.seed
        return kwargs

    def request(self, prompt: str, messages: list[dict[str, str]] | None = None) -> Timed:
        """One greedy streamed request: text, tokens (the usage chunk's, else one per chunk), timings.

        A chat target is sent messages (a conversation's turns before its answer) when given, else the
        prompt as one user turn; a plain target is sent the prompt.
        """
        kwargs = self._kwargs()
        with tracing.span_from("evaluation.request", self.traceparent, {"target": self.target.name}):
            kwargs["extra_headers"] = tracing.http_headers()
            start = time.perf_counter()
            first = 0.0
            pieces: list[str] = []
            chunks = usage_tokens = 0
            if self.target.chat:
                turns = messages if messages is not None else [{"role": "user", "content": prompt}]
                stream = self.client.chat.completions.create(messages=turns, **kwargs)
            else:
                stream = self.client.completions.create(prompt=prompt, **kwargs)
            for chunk in stream:
                if chunk.choices:
                    choice = chunk.choices[0]
                    piece = (choice.delta.content if self.target.chat else choice.text) or ""
                    if piece:
                        first = first or time.perf_counter()
                        pieces.append(piece)
                        chunks += 1
                if getattr(chunk, "usage", None):
                    usage_tokens = int(chunk.usage.completion_tokens)
            end = time.perf_counter()
        return Timed(text="".join(pieces), tokens=usage_tokens or chunks, latency_ms=(end - start) * 1000.0,
                     ttft_ms=((first or end) - start) * 1000.0)  # fmt: skip

    def timed(self, example: Example) -> Timed:
        try:
            return self.request(example.prompt, example.messages if self.target.chat else None)
        except openai.OpenAIError as exc:
            return Timed(error=describe_error(exc, self.target.base_url))


def _level(client: TargetClient, examples: list[Example], concurrency: int,
           on_done: Any = None) -> tuple[Level, list[Timed]]:  # fmt: skip
    """Send every example with `concurrency` requests in flight; the level's figures and each request."""
    level = Level(concurrency=concurrency)
    start = time.perf_counter()
    done: list[Timed] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for i, timed in enumerate(pool.map(client.timed, examples), start=1):
            done.append(timed)
            if on_done is not None:
                on_done(i)
    level.wall_s = time.perf_counter() - start
    for timed in done:
        level.requests += 1
        if timed.error:
            level.errors += 1
        else:
            level.tokens += timed.tokens
            level.latencies_ms.append(timed.latency_ms)
            level.ttft_ms.append(timed.ttft_ms)
    return level, done


def measure_target(
    target: TargetConfig,
    examples: list[Example],
    sampling: SamplingConfig,
    *,
    metric: str = "exact_match",
    answer_pattern: str = "",
    concurrency_levels: list[int] | tuple[int, ...] = (1,),
    warmup_requests: int = 2,
    traceparent: str = "",
    progress: Progress = null_progress,
) -> Measurement:
    """Warm up, answer every example at the lowest level, sweep the others, then read memory and
    footprint. A target that cannot be reached raises Unavailable (the job marks it failed)."""
    client = TargetClient(target, sampling, traceparent)
    result = Measurement(name=target.name, model_uri=target.model_uri)
    for i in range(warmup_requests):
        timed = client.timed(examples[i % len(examples)])
        if timed.error:
            raise Unavailable(f"target {target.name}: warm-up request failed: {timed.error}")

    levels = sorted(set(concurrency_levels)) or [1]
    count = len(examples)
    total = count * len(levels)
    step = max(1, count // 10)
    for index, concurrency in enumerate(levels):

        def on_done(i: int, index: int = index, concurrency: int = concurrency) -> None:
            if i % step == 0 or i == count:
                progress((index * count + i) / total,
                         f"{target.name}: {i}/{count} prompts at concurrency {concurrency}")  # fmt: skip

        level, done = _level(client, examples, concurrency, on_done)
        result.sweep.append(level)
        if index:
            continue
        for example, timed in zip(examples, done):  # the quality pass
            result.completions.append(timed.text)
            result.correct.append(
                not timed.error
                and is_correct(
                    example.expected, timed.text, metric, pattern=answer_pattern, choices=example.choices
                )
            )
            if timed.error:
                result.errors.append(timed.error)
            else:
                result.latencies_ms.append(timed.latency_ms)
                result.ttft_ms.append(timed.ttft_ms)
                result.completion_tokens.append(timed.tokens)
                if timed.tokens > 1:
                    result.tpot_ms.append(timed.tpot_ms)
        if len(result.errors) * 2 > len(examples):
            raise Unavailable(
                f"target {target.name}: {len(result.errors)} of {len(examples)} requests failed; "
                f"first: {result.errors[0]}"
            )
    if result.errors:
        result.notes.append(
            f"{len(result.errors)} requests failed (counted as wrong); first: {result.errors[0]}"
        )
    for level in result.sweep[1:]:
        if level.errors:
            result.notes.append(f"{level.errors} of {level.requests} requests failed at concurrency "
                                f"{level.concurrency}")  # fmt: skip

    result.memory_bytes, note = scrape_memory(target.base_url, api_key=client.api_key)
    if note:
        result.notes.append(note)
    result.size_bytes, result.parameters = model_footprint(target.model_uri)
    if target.model_uri and not result.parameters:
        result.notes.append(f"parameter count unknown for {target.model_uri}")
    log.info(
        "target %s: %s",
        target.name,
        json.dumps({"errors": len(result.errors), "notes": result.notes}),
    )
    return result
