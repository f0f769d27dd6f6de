"""What an evaluation run measures, validated before any work: EvaluationConfig and from_proto.

Each target is an OpenAI-compatible endpoint: a `base_url`, or a serving
`deployment` name that the evaluation service resolves to a base URL (filling
`base_url`) before the job runs. Every problem is reported at once, named by
its proto path (`spec.targets[1].base_url`, ...).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from slmops.api.v1 import evaluation_pb2
from slmops.core import artifacts, settings
from slmops.core.datasets import VALIDATION_FILE, split_exists
from slmops.core.errors import InvalidSpec, collect
from slmops.core.spec_checks import (
    Problems,
    SamplingConfig,
    check_api_key_env,
    check_http_url,
    check_local_uri,
    sampling_from_proto,
)

METRICS = ("exact_match", "normalized", "regex", "choice", "contains")
QUALITY_METRICS = ("rouge_l", "chrf", "bleu", "semantic_similarity", "perplexity")
DEFAULT_QUALITY = ("rouge_l", "chrf", "bleu")
RETENTION_METRICS = ("accuracy", "rouge_l", "chrf", "bleu", "semantic_similarity", "judge")
MAX_CONCURRENCY = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DEPLOYMENT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class TargetConfig(BaseModel):
    name: str
    base_url: str = ""  # empty until the service resolves `deployment`
    deployment: str = ""
    model: str = ""  # empty: the deployment name, else the endpoint's first listed model
    model_uri: str = ""
    api_key_env: str = ""
    chat: bool = False
    timeout_s: float = 120.0


class GateConfig(BaseModel):
    candidate: str
    min_retention: float = 0.0  # 0: not checked
    min_accuracy: float = 0.0  # 0: not checked
    max_latency_p95_ms: float = 0.0  # 0: not checked
    min_retention_by_metric: dict[str, float] = Field(default_factory=dict)
    min_tokens_per_second: float = 0.0  # 0: not checked


class JudgeConfig(BaseModel):
    base_url: str
    model: str
    api_key_env: str = ""
    chat: bool = True


class EvaluationConfig(BaseModel):
    targets: list[TargetConfig]
    dataset_uri: str
    reference: str  # the target whose accuracy is 100% retention
    metric: Literal["exact_match", "normalized", "regex", "choice", "contains"] = "exact_match"
    answer_pattern: str = ""
    quality_metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_QUALITY))
    judge: JudgeConfig | None = None
    max_prompts: int = 0  # 0: all
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    concurrency: int = 1
    concurrency_levels: list[int] = Field(default_factory=lambda: [1])
    warmup_requests: int = 2
    output_uri: str = ""
    gate: GateConfig | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def target(self, name: str) -> TargetConfig:
        return next(t for t in self.targets if t.name == name)


def _target(msg: evaluation_pb2.EvalTarget, index: int, problems: Problems) -> TargetConfig:
    field = f"spec.targets[{index}]"
    if not msg.name:
        problems.append((f"{field}.name", "is required (the target's label in the report, e.g. teacher)"))
    elif not _NAME.match(msg.name):
        problems.append((f"{field}.name", f"{msg.name!r}: use letters, digits, '_', '-', '.' (at most 63)"))
    if msg.base_url:
        check_http_url(msg.base_url, f"{field}.base_url", problems)
    elif not msg.deployment:
        problems.append(
            (
                field,
                "set base_url (an OpenAI-compatible URL) or deployment (a serving deployment name)",
            )
        )
    if msg.deployment and not _DEPLOYMENT.match(msg.deployment):
        problems.append(
            (
                f"{field}.deployment",
                f"{msg.deployment!r} is not a deployment name (lowercase, digits, '-')",
            )
        )
    check_api_key_env(msg.api_key_env, f"{field}.api_key_env", problems)
    model_uri = ""
    if msg.model_uri:
        model_uri = check_local_uri(msg.model_uri, f"{field}.model_uri", problems)
    return TargetConfig(
        name=msg.name,
        base_url=msg.base_url.rstrip("/"),
        deployment=msg.deployment,
        model=msg.model or msg.deployment,
        model_uri=model_uri,
        api_key_env=msg.api_key_env,
        chat=msg.chat,
    )


def _dataset(value: str, problems: Problems) -> str:
    field = "spec.dataset_uri"
    uri = check_local_uri(value, field, problems)
    if uri.startswith("file://") and not any(p[0] == field for p in problems):
        path = artifacts.local_path(uri)
        if path.is_dir() and not split_exists(uri, VALIDATION_FILE):
            problems.append(
                (
                    field,
                    f"{value!r} is a folder without a validation split (want a dataset or a JSONL file)",
                )
            )
    return uri


def _gate(msg: evaluation_pb2.QualityGate, names: set[str], problems: Problems) -> GateConfig:
    if not msg.candidate:
        problems.append(
            ("spec.gate.candidate", "is required when a gate is set (the target the gate judges)")
        )
    elif msg.candidate not in names:
        problems.append(
            (
                "spec.gate.candidate",
                f"{msg.candidate!r} names no target ({', '.join(sorted(names))})",
            )
        )
    if msg.min_retention < 0:
        problems.append(("spec.gate.min_retention", f"must not be negative, got {msg.min_retention}"))
    if not 0 <= msg.min_accuracy <= 1:
        problems.append(("spec.gate.min_accuracy", f"must be in [0, 1], got {msg.min_accuracy}"))
    if msg.max_latency_p95_ms < 0:
        problems.append(
            ("spec.gate.max_latency_p95_ms", f"must not be negative, got {msg.max_latency_p95_ms}")
        )
    if msg.min_tokens_per_second < 0:
        problems.append(
            ("spec.gate.min_tokens_per_second", f"must not be negative, got {msg.min_tokens_per_second}")
        )
    for metric, value in sorted(msg.min_retention_by_metric.items()):
        field = f"spec.gate.min_retention_by_metric[{metric}]"
        if metric not in RETENTION_METRICS:
            problems.append((field, f"unknown metric; one of {', '.join(RETENTION_METRICS)}"))
        elif value < 0:
            problems.append((field, f"must not be negative, got {value}"))
    return GateConfig(
        candidate=msg.candidate,
        min_retention=msg.min_retention,
        min_accuracy=msg.min_accuracy,
        max_latency_p95_ms=msg.max_latency_p95_ms,
        min_retention_by_metric=dict(msg.min_retention_by_metric),
        min_tokens_per_second=msg.min_tokens_per_second,
    )


def _judge(msg: evaluation_pb2.JudgeSpec, problems: Problems) -> JudgeConfig:
    check_http_url(msg.base_url, "spec.judge.base_url", problems)
    if not msg.model:
        problems.append(("spec.judge.model", "is required (the judge model's name at the endpoint)"))
    check_api_key_env(msg.api_key_env, "spec.judge.api_key_env", problems)
    return JudgeConfig(base_url=msg.base_url.rstrip("/"), model=msg.model, api_key_env=msg.api_key_env,
                       chat=msg.chat)  # fmt: skip


def _quality(spec: evaluation_pb2.EvaluationSpec, problems: Problems) -> list[str]:
    names = list(spec.quality_metrics) or list(DEFAULT_QUALITY)
    for index, name in enumerate(spec.quality_metrics):
        if name not in QUALITY_METRICS:
            problems.append((f"spec.quality_metrics[{index}]",
                             f"{name!r} is not a quality metric; one of {', '.join(QUALITY_METRICS)} "
                             "(accuracy is always measured; judge is added by spec.judge)"))  # fmt: skip
    return [n for n in dict.fromkeys(names) if n in QUALITY_METRICS]


def _levels(spec: evaluation_pb2.EvaluationSpec, problems: Problems) -> list[int]:
    levels = list(spec.concurrency_levels) or [spec.concurrency or 1]
    for index, level in enumerate(spec.concurrency_levels):
        if not 1 <= level <= MAX_CONCURRENCY:
            problems.append(
                (f"spec.concurrency_levels[{index}]", f"must be in 1..{MAX_CONCURRENCY}, got {level}")
            )
    return sorted({level for level in levels if 1 <= level <= MAX_CONCURRENCY}) or [1]


def from_proto(spec: evaluation_pb2.EvaluationSpec) -> EvaluationConfig:
    """Validate an EvaluationSpec completely; raise one InvalidSpec listing every problem."""
    problems: Problems = []
    if not spec.targets:
        problems.append(("spec.targets", "name at least one target to evaluate"))
    targets = [_target(t, i, problems) for i, t in enumerate(spec.targets)]
    names = [t.name for t in targets if t.name]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(("spec.targets", f"target name {name!r} is used more than once"))
    dataset_uri = _dataset(spec.dataset_uri, problems)

    reference = spec.reference or (names[0] if names else "")
    if spec.reference and spec.reference not in names:
        problems.append(("spec.reference", f"{spec.reference!r} names no target ({', '.join(names)})"))
    metric = spec.metric or "exact_match"
    if metric not in METRICS:
        problems.append(("spec.metric", f"must be one of {', '.join(METRICS)}, got {spec.metric!r}"))
    if metric == "regex":
        if not spec.answer_pattern:
            problems.append(("spec.answer_pattern", "is required with metric regex (the answer's pattern)"))
        else:
            try:
                re.compile(spec.answer_pattern)
            except re.error as exc:
                problems.append(("spec.answer_pattern", f"is not a regular expression: {exc}"))
    elif spec.answer_pattern:
        problems.append(("spec.answer_pattern", "is used only with metric regex"))
    quality = _quality(spec, problems)
    levels = _levels(spec, problems)
    judge = _judge(spec.judge, problems) if spec.HasField("judge") else None
    if spec.max_prompts < 0:
        problems.append(("spec.max_prompts", f"must not be negative (0 means all), got {spec.max_prompts}"))
    sampling = sampling_from_proto(spec.sampling, "spec.sampling", problems)
    if spec.sampling.temperature:
        problems.append(("spec.sampling.temperature", "evaluation decodes greedily; leave it 0"))
    if spec.sampling.top_logprobs:
        problems.append(("spec.sampling.top_logprobs", "is not used by evaluation; leave it 0"))
    if not 0 <= spec.concurrency <= 64:
        problems.append(("spec.concurrency", f"must be in 1..64 (0 means 1), got {spec.concurrency}"))
    if not 0 <= spec.warmup_requests <= 100:
        problems.append(
            ("spec.warmup_requests", f"must be in 1..100 (0 means 2), got {spec.warmup_requests}")
        )
    output_uri = ""
    if spec.output_uri:
        try:
            output_uri = artifacts.confine(spec.output_uri, settings.allowed_roots(), "spec.output_uri")
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    gate = _gate(spec.gate, set(names), problems) if spec.HasField("gate") else None

    collect(problems)
    return EvaluationConfig(
        targets=targets,
        dataset_uri=dataset_uri,
        reference=reference,
        metric=metric,  # type: ignore[arg-type]
        answer_pattern=spec.answer_pattern,
        quality_metrics=quality,
        judge=judge,
        max_prompts=spec.max_prompts,
        sampling=sampling,
        concurrency=spec.concurrency or 1,
        concurrency_levels=levels,
        warmup_requests=spec.warmup_requests or 2,
        output_uri=output_uri,
        gate=gate,
        labels=dict(spec.labels),
    )
