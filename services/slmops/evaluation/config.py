"""What an evaluation run measures: the pydantic models are the spec.

Each default and bound of evaluation.proto is stated once, here, as a `Field`
constraint or a validator; the service validates an `EvaluationSpec` with
these models (spec.py) and the Ray job validates its config dict with the same
ones (job.py). Cross-field rules are `cross_checks`, reported with the fields'
own problems (core/spec_checks.SpecModel).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from slmops.core.errors import collect
from slmops.core.spec_checks import SamplingConfig, SpecModel, problems_from

METRICS = ("exact_match", "normalized", "regex", "choice", "contains")
QUALITY_METRICS = ("rouge_l", "chrf", "bleu", "semantic_similarity", "perplexity")
DEFAULT_QUALITY = ("rouge_l", "chrf", "bleu")
RETENTION_METRICS = ("accuracy", "rouge_l", "chrf", "bleu", "semantic_similarity", "judge")
MAX_CONCURRENCY = 64
JUDGE_CONCURRENCY, MAX_JUDGE_CONCURRENCY = 4, 16  # JudgeSpec.concurrency: 0 means 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DEPLOYMENT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
Level = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]
Problems = list[tuple[tuple[str | int, ...], str]]


class TargetConfig(SpecModel):
    """One model under test, reached through its OpenAI-compatible API."""

    required: ClassVar[dict[str, str]] = {
        "name": "is required (the target's label in the report, e.g. teacher)"
    }

    name: str
    base_url: str = ""  # empty until the service resolves `deployment`
    deployment: str = ""
    model: str = ""  # empty: the deployment name, else the endpoint's first listed model
    model_uri: str = ""
    api_key_env: str = ""
    chat: bool = False
    timeout_s: float = Field(120.0, gt=0.0, le=3600.0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: use letters, digits, '_', '-', '.' (at most 63)")
        return value

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("deployment")
    @classmethod
    def _deployment(cls, value: str) -> str:
        if value and not _DEPLOYMENT.match(value):
            raise ValueError(f"{value!r} is not a deployment name (lowercase, digits, '-')")
        return value

    @model_validator(mode="after")
    def _model_defaults_to_deployment(self) -> TargetConfig:
        self.model = self.model or self.deployment
        return self

    @classmethod
    def cross_checks(cls, data: dict[str, Any]) -> Problems:
        if data.get("base_url") or data.get("deployment"):
            return []
        return [((), "set base_url (an OpenAI-compatible URL) or deployment (a serving deployment name)")]


class GateConfig(SpecModel):
    """Thresholds the candidate must meet; a threshold left 0 is not checked."""

    required: ClassVar[dict[str, str]] = {
        "candidate": "is required when a gate is set (the target the gate judges)"
    }

    candidate: str
    min_retention: float = Field(0.0, ge=0.0)
    min_accuracy: float = Field(0.0, ge=0.0, le=1.0)
    max_latency_p95_ms: float = Field(0.0, ge=0.0)
    min_retention_by_metric: dict[str, float] = Field(default_factory=dict)
    min_tokens_per_second: float = Field(0.0, ge=0.0)

    @classmethod
    def cross_checks(cls, data: dict[str, Any]) -> Problems:
        problems: Problems = []
        by_metric = data.get("min_retention_by_metric")
        for metric, value in sorted(by_metric.items() if isinstance(by_metric, dict) else []):
            where = (_entry(metric),)
            if metric == "perplexity":
                problems.append((where, "perplexity has no retention (lower is better: it is reported, not gated); "
                                        f"one of {', '.join(RETENTION_METRICS)}"))  # fmt: skip
            elif metric not in RETENTION_METRICS:
                problems.append((where, f"unknown metric; one of {', '.join(RETENTION_METRICS)}"))
            elif isinstance(value, int | float) and value < 0:
                problems.append((where, f"must not be negative, got {value}"))
        return problems


class JudgeConfig(SpecModel):
    """An LLM judge: an OpenAI-compatible endpoint rates each answer against the reference."""

    required: ClassVar[dict[str, str]] = {
        "base_url": "is required",
        "model": "is required (the judge model's name at the endpoint)",
    }

    base_url: str
    model: str
    api_key_env: str = ""
    chat: bool = False
    concurrency: int = Field(JUDGE_CONCURRENCY, ge=1, le=MAX_JUDGE_CONCURRENCY)  # judge requests at once

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _zero_is_the_default(cls, value: Any) -> Any:
        return JUDGE_CONCURRENCY if value == 0 else value


class EvaluationConfig(SpecModel):
    required: ClassVar[dict[str, str]] = {
        "targets": "name at least one target to evaluate",
        "dataset_uri": "is required",
    }

    targets: list[TargetConfig] = Field(min_length=1)
    dataset_uri: str
    reference: str = ""  # the target whose accuracy is 100% retention; empty: the first target
    metric: Literal["exact_match", "normalized", "regex", "choice", "contains"] = "exact_match"
    answer_pattern: str = ""  # metric regex: the answer is the first match (group 1 if any)
    quality_metrics: list[Literal["rouge_l", "chrf", "bleu", "semantic_similarity", "perplexity"]] = Field(
        default_factory=lambda: list(DEFAULT_QUALITY)
    )
    judge: JudgeConfig | None = None
    max_prompts: int = Field(0, ge=0)  # 0: all
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    concurrency: Level = 1
    concurrency_levels: list[Level] = Field(default_factory=list)  # empty: [concurrency]
    warmup_requests: int = Field(2, ge=0, le=100)
    output_uri: str = ""
    gate: GateConfig | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("answer_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _defaults(self) -> EvaluationConfig:
        self.reference = self.reference or self.targets[0].name
        self.quality_metrics = list(dict.fromkeys(self.quality_metrics or DEFAULT_QUALITY))
        self.concurrency_levels = sorted(set(self.concurrency_levels)) or [self.concurrency]
        return self

    @classmethod
    def cross_checks(cls, data: dict[str, Any]) -> Problems:
        problems: Problems = []
        targets = data.get("targets") if isinstance(data.get("targets"), list) else []
        names = [_get(t, "name") for t in targets if _get(t, "name")]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append((("targets",), f"target name {name!r} is used more than once"))
        if data.get("reference") and data["reference"] not in names:
            problems.append((("reference",), f"{data['reference']!r} names no target ({', '.join(names)})"))
        metric, pattern = cls.value(data, "metric"), data.get("answer_pattern")
        if metric == "regex" and not pattern:
            problems.append((("answer_pattern",), "is required with metric regex (the answer's pattern)"))
        elif metric != "regex" and pattern:
            problems.append((("answer_pattern",), "is used only with metric regex"))
        if _get(data.get("sampling"), "temperature"):
            problems.append((("sampling", "temperature"), "evaluation decodes greedily; leave it 0"))
        if _get(data.get("sampling"), "top_logprobs"):
            problems.append((("sampling", "top_logprobs"), "is not used by evaluation; leave it 0"))
        candidate = _get(data.get("gate"), "candidate")
        if candidate and candidate not in names:
            problems.append(
                (("gate", "candidate"), f"{candidate!r} names no target ({', '.join(sorted(set(names)))})")
            )
        return problems + _unmeasured_gates(data)

    def target(self, name: str) -> TargetConfig:
        return next(t for t in self.targets if t.name == name)


def validated(config: dict[str, Any]) -> EvaluationConfig:
    """A job's config dict validated by the model the service used; InvalidSpec names proto paths."""
    try:
        return EvaluationConfig.model_validate(config)
    except ValidationError as exc:
        collect(problems_from(exc))
        raise


def _entry(metric: str) -> str:
    """The proto path of a min_retention_by_metric entry: min_retention_by_metric["rouge_l"]."""
    return f"min_retention_by_metric[{json.dumps(metric)}]"


def _unmeasured_gates(data: dict[str, Any]) -> Problems:
    """A retention gate on a metric the spec does not measure could never pass: refuse it up front."""
    by_metric = _get(data.get("gate"), "min_retention_by_metric")
    listed = EvaluationConfig.value(data, "quality_metrics")
    listed = [m for m in listed if isinstance(m, str)] if isinstance(listed, list) else []
    quality = listed or list(DEFAULT_QUALITY)  # proto3: an empty list is the default
    measured = {"accuracy", *quality, *(["judge"] if data.get("judge") else [])}
    problems: Problems = []
    for metric, value in sorted(by_metric.items() if isinstance(by_metric, dict) else []):
        if metric not in RETENTION_METRICS or metric in measured or not value:
            continue  # unknown metrics are GateConfig's problem; a 0 threshold is not checked
        if metric == "judge":
            how = "set spec.judge (slmops bench: --judge-url and --judge-model)"
        else:
            now = ", ".join(listed) or f"empty, so {', '.join(DEFAULT_QUALITY)}"
            how = f"add {metric} to spec.quality_metrics, now {now} (slmops bench: --quality {metric})"
        problems.append(
            (("gate", _entry(metric)), f"{metric} is not measured, so this gate could never pass: {how}")
        )
    return problems


def _get(section: Any, name: str) -> Any:
    """A field of an unvalidated section (a dict or a model); None when absent."""
    if isinstance(section, BaseModel):
        return getattr(section, name, None)
    return section.get(name) if isinstance(section, dict) else None
