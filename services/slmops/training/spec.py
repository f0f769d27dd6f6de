"""The training job's configuration: a validated, JSON-serialisable domain object.

`from_proto` turns a `TrainingSpec` message into a `TrainingConfig`, applying
the defaults the proto documents and reporting every problem at once as one
`InvalidSpec` whose field names are proto paths (`spec.hyperparameters.epochs`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from slmops.api.v1 import training_pb2
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.quantities import check_memory, parse_memory  # noqa: F401 (parse_memory is public here)

METHODS = {training_pb2.SFT_DISTILL: "sft_distill", training_pb2.FULL: "full"}
NOT_YET = {
    training_pb2.LOGIT_DISTILL: "LOGIT_DISTILL",
    training_pb2.LORA: "LORA",
    training_pb2.QLORA: "QLORA",
}
PRECISIONS = ("fp32", "bf16", "fp16")
OverrideValue = bool | int | float | str | None

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ModelInitConfig(BaseModel):
    """Where training starts: a checkpoint's weights, or its config with fresh weights."""

    model: str
    from_config: bool = False
    config_overrides: dict[str, OverrideValue] = Field(default_factory=dict)


class Hyperparameters(BaseModel):
    """Optimisation settings. `batch_size` is the global micro-batch, split across workers."""

    learning_rate: float = 5e-4
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_seq_length: int = 128
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_grad_norm: float = 1.0


class Resources(BaseModel):
    """Ray Train workers and what each one reserves."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_bytes: int = 0


class TrainingConfig(BaseModel):
    """Everything a training job needs, after validation and defaults."""

    method: Literal["sft_distill", "full"]
    base: ModelInitConfig
    dataset_uri: str
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: Resources = Field(default_factory=Resources)
    output_uri: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


def parse_override(text: str) -> OverrideValue:
    """A config override value from its string form: bool, int, float, null, else the string."""
    value = text.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def _check_range(problems: list[tuple[str, str]], field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also catches NaN
        problems.append((field, f"must be between {low:g} and {high:g}, got {value:g}"))


def _method(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> str:
    if spec.method in METHODS:
        return METHODS[spec.method]
    if spec.method in NOT_YET:
        problems.append(
            ("spec.method", f"{NOT_YET[spec.method]} is not available yet; use SFT_DISTILL or FULL")
        )
    elif spec.method == training_pb2.TRAINING_METHOD_UNSPECIFIED:
        problems.append(("spec.method", "is required: SFT_DISTILL or FULL"))
    else:
        problems.append(("spec.method", f"unknown method {spec.method}"))
    return "sft_distill"


def _base(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> ModelInitConfig:
    base = spec.base
    if not base.model.strip():
        problems.append(("spec.base.model", "is required: a model folder, artifact URI or hub id"))
    overrides: dict[str, OverrideValue] = {}
    for key in sorted(base.config_overrides):
        text = base.config_overrides[key]
        field = f"spec.base.config_overrides[{key}]"
        if not _KEY.match(key):
            problems.append((field, "is not a valid config attribute name"))
        elif not text.strip():
            problems.append((field, "has an empty value"))
        else:
            overrides[key] = parse_override(text)
    if overrides and not base.from_config:
        problems.append(("spec.base.config_overrides", "apply only with spec.base.from_config (a new model)"))
    for key, value in overrides.items():
        if key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_key_value_heads",
            "max_position_embeddings",
            "vocab_size",
            "head_dim",
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append((f"spec.base.config_overrides[{key}]", "must be a positive integer"))
    return ModelInitConfig(model=base.model.strip(), from_config=base.from_config, config_overrides=overrides)


def _hyperparameters(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> Hyperparameters:
    hp = spec.hyperparameters
    prefix = "spec.hyperparameters."
    _check_range(problems, prefix + "learning_rate", hp.learning_rate, 0.0, 1.0)
    _check_range(problems, prefix + "epochs", hp.epochs, 0, 10_000)
    _check_range(problems, prefix + "max_steps", hp.max_steps, 0, 10**9)
    _check_range(problems, prefix + "batch_size", hp.batch_size, 0, 65_536)
    _check_range(problems, prefix + "gradient_accumulation_steps", hp.gradient_accumulation_steps, 0, 4096)
    _check_range(problems, prefix + "weight_decay", hp.weight_decay, 0.0, 1.0)
    _check_range(problems, prefix + "warmup_ratio", hp.warmup_ratio, 0.0, 0.99)
    _check_range(problems, prefix + "max_seq_length", hp.max_seq_length, 0, 1 << 20)
    _check_range(problems, prefix + "seed", hp.seed, 0, 2**32 - 1)
    precision = hp.precision.strip().lower() or "fp32"
    if precision not in PRECISIONS:
        problems.append(
            (prefix + "precision", f"must be one of {', '.join(PRECISIONS)}, got {hp.precision!r}")
        )
        precision = "fp32"
    for name in ("distill_temperature", "distill_alpha"):
        if getattr(hp, name):
            problems.append((prefix + name, "applies to LOGIT_DISTILL only, which is not available yet"))
    return Hyperparameters(
        learning_rate=hp.learning_rate if hp.learning_rate > 0 else 5e-4,
        epochs=max(hp.epochs, 0) or 1,
        max_steps=max(hp.max_steps, 0),
        batch_size=max(hp.batch_size, 0) or 16,
        gradient_accumulation_steps=max(hp.gradient_accumulation_steps, 0) or 1,
        weight_decay=hp.weight_decay,
        warmup_ratio=hp.warmup_ratio,
        max_seq_length=max(hp.max_seq_length, 0) or 128,
        seed=max(hp.seed, 0),
        precision=precision,
    )


def _resources(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> Resources:
    res = spec.resources
    _check_range(problems, "spec.resources.num_workers", res.num_workers, 0, 1024)
    _check_range(problems, "spec.resources.cpus_per_worker", res.cpus_per_worker, 0.0, 1024.0)
    _check_range(problems, "spec.resources.gpus_per_worker", res.gpus_per_worker, 0.0, 64.0)
    memory = check_memory(res.memory, "spec.resources.memory", problems)
    return Resources(
        num_workers=max(res.num_workers, 0) or 1,
        cpus_per_worker=res.cpus_per_worker if res.cpus_per_worker > 0 else 1.0,
        gpus_per_worker=max(res.gpus_per_worker, 0.0),
        memory_bytes=memory,
    )


def _is_local(value: str) -> bool:
    """A file:// URI or a path that exists or is spelled as one; anything else is a hub id or remote URI."""
    if value.startswith("file://"):
        return True
    if "://" in value:
        return False
    return value.startswith(("/", ".", "~")) or Path(value).exists()


def _check_local_input(value: str, field: str, required_file: str, problems: list[tuple[str, str]]) -> str:
    """Local inputs must lie under the allowed roots and hold what the job will read.

    Returns a local input as an absolute file:// URI (the job runs in another
    working directory); anything else as it is.
    """
    if not _is_local(value):
        return value
    try:
        uri = artifacts.confine(value, settings.allowed_roots(), field)
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return value
    folder = artifacts.local_path(uri)
    if not (folder / required_file).is_file():
        problems.append((field, f"{value!r} has no {required_file}"))
    return uri


def from_proto(spec: training_pb2.TrainingSpec) -> TrainingConfig:
    """Validate a TrainingSpec and apply its defaults; one InvalidSpec lists every problem."""
    problems: list[tuple[str, str]] = []
    method = _method(spec, problems)
    base = _base(spec, problems)
    dataset_uri = spec.dataset_uri.strip()
    if not dataset_uri:
        problems.append(("spec.dataset_uri", "is required: a dataset artifact with train.jsonl"))
    else:
        dataset_uri = _check_local_input(dataset_uri, "spec.dataset_uri", "train.jsonl", problems)
    if base.model:
        base.model = _check_local_input(base.model, "spec.base.model", "config.json", problems)
    hyperparameters = _hyperparameters(spec, problems)
    resources = _resources(spec, problems)
    if hyperparameters.batch_size % resources.num_workers:
        problems.append(
            (
                "spec.hyperparameters.batch_size",
                f"{hyperparameters.batch_size} does not split evenly over {resources.num_workers} workers",
            )
        )
    if spec.HasField("lora") and spec.lora.ByteSize():
        problems.append(("spec.lora", "applies to LORA and QLORA only, which are not available yet"))
    collect(problems)
    return TrainingConfig(
        method=method,
        base=base,
        dataset_uri=dataset_uri,
        hyperparameters=hyperparameters,
        resources=resources,
        output_uri=spec.output_uri.strip(),
        labels=dict(spec.labels),
    )
