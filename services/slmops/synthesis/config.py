"""What a synthesis job does: the pydantic models are the spec.

Each default and bound of synthesis.proto is stated once, here, as a `Field`
constraint or a validator; the service validates a `SynthesisSpec` with these
models (spec.py) and the Ray job validates its config dict with the same ones
(job.py). Cross-field rules are `cross_checks`, reported with the fields' own
problems (core/spec_checks.SpecModel).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator

from slmops.core.errors import collect
from slmops.core.spec_checks import SamplingConfig, SpecModel, problems_from
from slmops.synthesis.filters import FiltersConfig
from slmops.synthesis.inputs import template_problem

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Config paths whose proto field has another name.
PROTO_PATHS = {"resources.memory_bytes": "resources.memory"}
Stripped = Annotated[str, StringConstraints(strip_whitespace=True)]


class EndpointTeacherConfig(SpecModel):
    """A teacher reachable through an OpenAI-compatible HTTP API."""

    required: ClassVar[dict[str, str]] = {
        "base_url": "is required",
        "model": "is required (the model name the endpoint serves)",
    }

    kind: Literal["endpoint"] = "endpoint"
    base_url: str
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    api_key_env: str = ""
    chat: bool = False
    max_concurrency: int = Field(4, ge=1, le=256)
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    # The teacher's tokenizer (file:// URI or hub id): top-k log-probabilities get token ids.
    tokenizer: Stripped = ""
    # Retries of 429, 500, 502, 503, 504, timeouts and connection errors (endpoint_teacher.py).
    max_attempts: int = Field(6, ge=1, le=100)
    backoff_s: float = Field(0.5, ge=0.0)
    backoff_max_s: float = Field(30.0, ge=0.0)
    retry_after_max_s: float = Field(120.0, ge=0.0)
    # Rate limits of the whole job (0: none); prices in money per million tokens (0: unknown).
    requests_per_minute: float = Field(0.0, ge=0.0)
    tokens_per_minute: float = Field(0.0, ge=0.0)
    price_prompt_per_million: float = Field(0.0, ge=0.0)
    price_completion_per_million: float = Field(0.0, ge=0.0)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class LocalTeacherConfig(SpecModel):
    """A teacher loaded from a Hugging Face model folder or hub id on the workers."""

    required: ClassVar[dict[str, str]] = {"model": "is required (a model folder or a hub id)"}

    kind: Literal["local"] = "local"
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    device: Stripped = "cpu"
    chat: bool = False  # prompts (and the system prompt) through the model's chat template
    batch_size: int = Field(8, ge=1, le=1024)  # prompts generated together

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"must be cpu or cuda[:N], got {value!r}")
        return value


TeacherConfig = Annotated[EndpointTeacherConfig | LocalTeacherConfig, Field(discriminator="kind")]


class ResourcesConfig(SpecModel):
    num_workers: int = Field(1, ge=1, le=1024)
    cpus_per_worker: float = Field(0.0, ge=0.0)  # 0: the teacher kind's default (job.py)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    memory_bytes: int = Field(0, ge=0)  # 0: unbounded


class SynthesisConfig(SpecModel):
    required: ClassVar[dict[str, str]] = {
        "prompts_uri": "is required",
        "teacher": "set exactly one teacher: endpoint (an OpenAI-compatible URL) or local",
    }

    prompts_uri: str
    teacher: TeacherConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    validation_fraction: float = Field(0.1, gt=0.0, le=0.9)
    seed: int = 0
    output_uri: str = ""
    system_prompt: str = ""  # chat teachers only
    num_shards: int = Field(2, ge=1, le=1024)
    # The job fails when more than this share of the prompts is rejected (what was answered is kept).
    max_reject_fraction: float = Field(0.5, ge=0.0, le=1.0)
    prompt_template: str = ""
    samples_per_prompt: int = Field(1, ge=1, le=16)
    label_column: str = ""  # the split keeps this field's values in proportion
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("prompt_template")
    @classmethod
    def _plain_fields(cls, value: str) -> str:
        problem = template_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @classmethod
    def cross_checks(cls, data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        teacher = _section(data, "teacher")
        sampling = _section(data, "sampling")
        kind = teacher.get("kind")
        if data.get("system_prompt") and not teacher.get("chat"):
            problems.append((("system_prompt",), "is only used by chat teachers: set spec.endpoint.chat "
                                                 "(or local.chat) or leave it empty"))  # fmt: skip
        temperature = _number(sampling, "temperature", SamplingConfig)
        if _number(data, "samples_per_prompt", cls) > 1 and temperature == 0:
            problems.append((("samples_per_prompt",), "more than one answer per prompt needs sampling: "
                                                      "set spec.sampling.temperature above 0"))  # fmt: skip
        if (
            kind == "endpoint"
            and teacher.get("tokenizer")
            and not _number(sampling, "top_logprobs", SamplingConfig)
        ):
            problems.append((("teacher", "endpoint", "tokenizer"), "maps top-k log-probabilities to token ids: "
                             "set spec.sampling.top_logprobs or leave it empty"))  # fmt: skip
        device = str(LocalTeacherConfig.value(teacher, "device")).strip()
        gpus = _number(_section(data, "resources"), "gpus_per_worker", ResourcesConfig)
        if kind == "local" and gpus > 0 and device == "cpu":
            problems.append((("resources", "gpus_per_worker"), "asks for GPUs but spec.local.device is cpu"))
        return problems


def validated(config: dict[str, Any]) -> SynthesisConfig:
    """A job's config dict validated by the model the service used; InvalidSpec names proto paths."""
    try:
        return SynthesisConfig.model_validate(config)
    except ValidationError as exc:
        collect([(oneof_path(field), problem) for field, problem in problems_from(exc, "spec", PROTO_PATHS)])
        raise


def oneof_path(field: str) -> str:
    """The proto path of a teacher's field: the oneof's member (`spec.endpoint.base_url`), as a
    pipeline file writes it, not the model's `teacher` that holds either member."""
    for kind in ("endpoint", "local"):
        if field.startswith(f"spec.teacher.{kind}"):
            return "spec." + field.removeprefix("spec.teacher.")
    return field


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value if isinstance(value, dict) else {}


def _number(data: dict[str, Any], name: str, model: type[SpecModel]) -> float:
    """A numeric field of an unvalidated section (its default when left out; 0 when not a number)."""
    try:
        return float(model.value(data, name))
    except (TypeError, ValueError):
        return 0.0
