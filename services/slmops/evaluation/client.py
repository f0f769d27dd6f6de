"""Drive one target over the OpenAI API and measure it.

For each target: a few warm-up requests, then every example with greedy
decoding, timing each request (wall clock) and checking its answer. After the
run, the predictor's resident memory is read from its Prometheus `/metrics`,
and size on disk and parameter count come from the target's model_uri.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import fsspec
import httpx
import openai

from slmops.core import artifacts, tracing
from slmops.core.datasets import VALIDATION_FILE, Prompt, parse_prompts, read_records
from slmops.core.endpoints import describe_error, resolve_api_key
from slmops.core.errors import InvalidSpec, NotFound, Unavailable
from slmops.core.progress import Progress, null_progress
from slmops.core.spec_checks import SamplingConfig
from slmops.evaluation.spec import TargetConfig

log = logging.getLogger(__name__)
MEMORY_METRIC = "process_resident_memory_bytes"


@dataclass
class Example:
    prompt: str
    expected: str


@dataclass
class Measurement:
    """Raw measurements of one target; report.py turns them into a TargetResult."""

    name: str
    model_uri: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    memory_bytes: int = 0
    size_bytes: int = 0
    parameters: int = 0
    notes: list[str] = field(default_factory=list)


def is_correct(expected: str, completion: str, metric: str = "exact_match") -> bool:
    """exact_match: the completion, stripped and cut at its first newline, equals expected
    stripped. contains: expected (stripped) occurs in the completion."""
    if metric == "contains":
        return expected.strip() in completion
    first_line = completion.strip().split("\n", 1)[0].strip()
    return first_line == expected.strip()


def load_examples(dataset_uri: str, max_prompts: int = 0) -> list[Example]:
    """Examples from a dataset folder's validation split, or from a JSONL file.

    The expected answer is a record's `answer`; without one, the teacher's `completion`.
    """
    fs, path = fsspec.core.url_to_fs(dataset_uri)
    if fs.isdir(path):  # a dataset folder: its validation split, JSONL or Parquet
        records = read_records(dataset_uri, VALIDATION_FILE, "spec.dataset_uri")
        prompts = [Prompt(number, record) for number, record in enumerate(records, start=1)]
    else:
        with fsspec.open(dataset_uri, "r", encoding="utf-8") as fh:
            prompts = parse_prompts(fh.read().splitlines(), "spec.dataset_uri")
    examples, problems = [], []
    for prompt in prompts:
        expected = prompt.fields.get("answer", prompt.fields.get("completion"))
        if expected is None:
            problems.append(
                ("spec.dataset_uri", f'line {prompt.line}: needs "answer" or "completion"')
            )
        else:
            examples.append(Example(prompt.fields["prompt"], str(expected)))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return examples[:max_prompts] if max_prompts else examples


def origin(base_url: str) -> str:
    parsed = urlparse(base_url)
    return f"{parsed.scheme}://{parsed.netloc}"


def scrape_memory(base_url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(resident bytes, note) from <origin>/metrics; (0, why) when it cannot be read."""
    url = origin(base_url) + "/metrics"
    try:
        response = httpx.get(url, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return 0, f"memory unknown: {url} unavailable ({type(exc).__name__})"
    for line in response.text.splitlines():
        if line.startswith(MEMORY_METRIC) and not line.startswith(MEMORY_METRIC + "_"):
            try:
                return int(float(line.rsplit(None, 1)[-1])), ""
            except ValueError:
                break
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
    """Greedy requests to one target, each timed and traced."""

    def __init__(self, target: TargetConfig, sampling: SamplingConfig, traceparent: str = ""):
        if not target.base_url:
            raise Unavailable(
                f"target {target.name}: deployment {target.deployment!r} was not resolved to a URL"
            )
        self.target = target
        self.sampling = sampling
        self.traceparent = traceparent
        self.client = openai.OpenAI(
            base_url=target.base_url,
            api_key=resolve_api_key(target.api_key_env),
            timeout=target.timeout_s,
            max_retries=0,
        )
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

    def complete(self, prompt: str) -> tuple[str, int, float]:
        """(completion, completion tokens, latency in ms) for one greedy request."""
        s = self.sampling
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": 0.0,
        }
        if s.stop:
            kwargs["stop"] = s.stop
        if s.seed is not None:
            kwargs["seed"] = s.seed
        with tracing.span_from(
            "evaluation.request", self.traceparent, {"target": self.target.name}
        ):
            kwargs["extra_headers"] = tracing.http_headers()
            start = time.perf_counter()
            if self.target.chat:
                response = self.client.chat.completions.create(
                    messages=[{"role": "user", "content": prompt}], **kwargs
                )
                text = response.choices[0].message.content or ""
            else:
                response = self.client.completions.create(prompt=prompt, **kwargs)
                text = response.choices[0].text or ""
            latency_ms = (time.perf_counter() - start) * 1000.0
        usage = getattr(response, "usage", None)
        return text, int(usage.completion_tokens) if usage else 0, latency_ms


def measure_target(
    target: TargetConfig,
    examples: list[Example],
    sampling: SamplingConfig,
    *,
    metric: str = "exact_match",
    concurrency: int = 1,
    warmup_requests: int = 2,
    traceparent: str = "",
    progress: Progress = null_progress,
) -> Measurement:
    """Warm up, run every example, then read memory and footprint."""
    client = TargetClient(target, sampling, traceparent)
    result = Measurement(name=target.name, model_uri=target.model_uri)
    for i in range(warmup_requests):
        try:
            client.complete(examples[i % len(examples)].prompt)
        except openai.OpenAIError as exc:
            raise Unavailable(
                f"target {target.name}: warm-up request failed: {describe_error(exc, target.base_url)}"
            ) from exc

    def one(example: Example) -> tuple[str, int, float, str]:
        try:
            return (*client.complete(example.prompt), "")
        except openai.OpenAIError as exc:
            return "", 0, 0.0, describe_error(exc, target.base_url)

    step = max(1, len(examples) // 10)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for i, (example, (text, tokens, latency_ms, error)) in enumerate(
            zip(examples, pool.map(one, examples)), start=1
        ):
            result.completions.append(text)
            result.correct.append(not error and is_correct(example.expected, text, metric))
            if error:
                result.errors.append(error)
            else:
                result.latencies_ms.append(latency_ms)
                result.completion_tokens.append(tokens)
            if i % step == 0 or i == len(examples):
                progress(
                    i / len(examples),
                    f"{target.name}: {i}/{len(examples)} prompts",
                    correct=float(sum(result.correct)),
                )
    if len(result.errors) * 2 > len(examples):
        raise Unavailable(
            f"target {target.name}: {len(result.errors)} of {len(examples)} requests failed; "
            f"first: {result.errors[0]}"
        )
    if result.errors:
        result.notes.append(
            f"{len(result.errors)} requests failed (counted as wrong); first: {result.errors[0]}"
        )

    result.memory_bytes, note = scrape_memory(target.base_url)
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
