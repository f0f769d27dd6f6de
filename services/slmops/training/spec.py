"""The training job's configuration: a validated, JSON-serialisable domain object.

The constraints live on the pydantic models (`Field(ge=..., le=...)`), so the
service at `Create` and the Ray job validate with the same model. `from_proto`
turns a `TrainingSpec` message into a `TrainingConfig`: it applies the
defaults the proto documents ("0 means ..."), validates, runs the chosen
recipe's own checks, and reports every problem at once as one `InvalidSpec`
whose field names are proto paths (`spec.hyperparameters.epochs`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from slmops.api.v1 import training_pb2
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.quantities import check_memory, parse_memory  # noqa: F401 (parse_memory is public here)
from slmops.training.recipes.sections import DistillSettings, LoraSettings, SearchSettings

METHODS = {
    training_pb2.SFT_DISTILL: "sft_distill",
    training_pb2.FULL: "full",
    training_pb2.LORA: "lora",
    training_pb2.QLORA: "qlora",
    training_pb2.LOGIT_DISTILL: "logit_distill",
    training_pb2.MULTI_ADAPTER: "multi_adapter",
}
Method = Literal["sft_distill", "full", "lora", "qlora", "logit_distill", "multi_adapter"]
PRECISIONS = ("fp32", "bf16", "fp16")
OverrideValue = bool | int | float | str | None

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelInitConfig(BaseModel):
    """Where training starts: a checkpoint's weights, or its config with fresh weights."""

    model: str
    from_config: bool = False
    config_overrides: dict[str, OverrideValue] = Field(default_factory=dict)
    init_seed: int | None = None  # from_config: the fresh weights' seed; None: hyperparameters.seed


class Hyperparameters(BaseModel):
    """Optimisation settings. `batch_size` is the global micro-batch, split across workers."""

    learning_rate: float = Field(5e-4, gt=0.0, le=1.0)
    epochs: int = Field(1, ge=1, le=10_000)
    max_steps: int = Field(0, ge=0, le=10**9)
    batch_size: int = Field(16, ge=1, le=65_536)
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.0, ge=0.0, le=0.99)
    max_seq_length: int = Field(128, ge=2, le=1 << 20)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_grad_norm: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(0, ge=0, le=10**9)  # optimizer steps; 0: once per epoch
    eval_every: int = Field(0, ge=0, le=10**9)  # optimizer steps; 0: with every checkpoint
    early_stopping_patience: int = Field(0, ge=0, le=1000)
    gradient_checkpointing: bool = False
    packing: bool = False


class Resources(BaseModel):
    """Ray Train workers and what each one reserves."""

    num_workers: int = Field(1, ge=1, le=1024)
    cpus_per_worker: float = Field(1.0, gt=0.0, le=1024.0)
    gpus_per_worker: float = Field(0.0, ge=0.0, le=64.0)
    memory_bytes: int = Field(0, ge=0)


class AdapterSource(BaseModel):
    """MULTI_ADAPTER: one named adapter and the dataset it learns."""

    name: str = Field(pattern=_ADAPTER_NAME.pattern)
    dataset_uri: str = Field(min_length=1)


class TrainingConfig(BaseModel):
    """Everything a training job needs, after validation and defaults."""

    method: Method
    base: ModelInitConfig
    dataset_uri: str = ""  # empty only for MULTI_ADAPTER, whose datasets are per adapter
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: Resources = Field(default_factory=Resources)
    lora: LoraSettings | None = None
    distill: DistillSettings | None = None
    adapters: list[AdapterSource] = Field(default_factory=list)
    search: SearchSettings | None = None
    max_failures: int = Field(3, ge=-1, le=100)
    output_uri: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    def datasets(self) -> dict[str, str]:
        """Dataset URIs by name: the adapters' for MULTI_ADAPTER, else {"train": dataset_uri}."""
        if self.method == "multi_adapter":
            return {a.name: a.dataset_uri for a in self.adapters}
        return {"train": self.dataset_uri}


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


# Config fields whose proto field has another name or lives elsewhere.
_PROTO_PATHS = {
    "resources.memory_bytes": "resources.memory",
    "distill.temperature": "hyperparameters.distill_temperature",
    "distill.alpha": "hyperparameters.distill_alpha",
}


def pydantic_problems(error: ValidationError, prefix: str = "spec") -> list[tuple[str, str]]:
    """A pydantic error as (proto path, problem) pairs."""
    problems = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        path = prefix + "." + _PROTO_PATHS.get(path[1:], path[1:]) if path else prefix
        value = item.get("input")
        shown = (
            f", got {value!r}" if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
        )
        problems.append(
            (path, item["msg"].replace("Input should", "must").replace("String should", "must") + shown)
        )
    return problems


def _or(value: Any, default: Any) -> Any:
    """The proto's "0 means default" rule; negative and NaN values pass through to be refused."""
    return default if value == 0 else value


def _base(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> dict[str, Any]:
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
    init_seed = base.init_seed if base.HasField("init_seed") else None
    if init_seed is not None and not base.from_config:
        problems.append(
            ("spec.base.init_seed", "seeds fresh weights: it applies only with spec.base.from_config")
        )
    return {"model": base.model.strip(), "from_config": base.from_config, "config_overrides": overrides,
            "init_seed": init_seed}  # fmt: skip


def _hyperparameters(hp: training_pb2.Hyperparameters) -> dict[str, Any]:
    return {
        "learning_rate": _or(hp.learning_rate, 5e-4),
        "epochs": _or(hp.epochs, 1),
        "max_steps": hp.max_steps,
        "batch_size": _or(hp.batch_size, 16),
        "gradient_accumulation_steps": _or(hp.gradient_accumulation_steps, 1),
        "weight_decay": hp.weight_decay,
        "warmup_ratio": hp.warmup_ratio,
        "max_seq_length": _or(hp.max_seq_length, 128),
        "seed": hp.seed,
        "precision": hp.precision.strip().lower() or "fp32",
        "checkpoint_every": hp.checkpoint_every,
        "eval_every": hp.eval_every,
        "early_stopping_patience": hp.early_stopping_patience,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "packing": hp.packing,
    }


def _resources(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> dict[str, Any]:
    res = spec.resources
    return {
        "num_workers": _or(res.num_workers, 1),
        "cpus_per_worker": _or(res.cpus_per_worker, 1.0),
        "gpus_per_worker": res.gpus_per_worker,
        "memory_bytes": check_memory(res.memory, "spec.resources.memory", problems),
    }


def _sections(
    spec: training_pb2.TrainingSpec, method: str, problems: list[tuple[str, str]]
) -> dict[str, Any]:
    """The method-specific sections, present when the spec sets them (or the method needs them)."""
    sections: dict[str, Any] = {}
    if spec.HasField("lora") and spec.lora.ByteSize() or method in ("lora", "qlora", "multi_adapter"):
        lora = spec.lora
        sections["lora"] = {
            "rank": _or(lora.rank, 8),
            "alpha": _or(lora.alpha, 16),
            "dropout": lora.dropout,
            "target_modules": [m.strip() for m in lora.target_modules],
            "adapter_name": lora.adapter_name.strip() or "default",
            "merge": lora.merge,
        }
    hp = spec.hyperparameters
    distill_hp = [name for name in ("distill_temperature", "distill_alpha") if getattr(hp, name)]
    if method and method != "logit_distill":
        problems.extend(
            (f"spec.hyperparameters.{name}", f"applies to LOGIT_DISTILL only, not {method.upper()}")
            for name in distill_hp
        )
    has_distill = spec.HasField("distill") and spec.distill.ByteSize()
    if has_distill or method == "logit_distill" or (distill_hp and not method):
        sections["distill"] = {
            "teacher": spec.distill.teacher.strip(),
            "loss": spec.distill.loss.strip().lower() or "forward_kl",
            "temperature": _or(hp.distill_temperature, 2.0),
            "alpha": _or(hp.distill_alpha, 0.5),
            "jsd_beta": _or(spec.distill.jsd_beta, 0.5),
        }
    if spec.adapters:
        sections["adapters"] = [
            {"name": a.name.strip(), "dataset_uri": a.dataset_uri.strip()} for a in spec.adapters
        ]
    if spec.HasField("search") and spec.search.ByteSize():
        s = spec.search
        sections["search"] = {
            "space": [
                {
                    "name": d.name.strip(),
                    "distribution": d.distribution.strip().lower(),
                    "low": d.low,
                    "high": d.high,
                    "values": list(d.values),
                }
                for d in s.space
            ],
            "trials": _or(s.trials, 4),
            "metric": s.metric.strip() or "eval_loss",
            "mode": s.mode.strip().lower() or "min",
            "max_concurrent_trials": _or(s.max_concurrent_trials, 1),
            "grace_period": _or(s.grace_period, 1),
        }
    return sections


def _is_local(value: str) -> bool:
    """A file:// URI or a path that exists or is spelled as one; anything else is a hub id or remote URI."""
    if value.startswith("file://"):
        return True
    if "://" in value:
        return False
    return value.startswith(("/", ".", "~")) or Path(value).exists()


def check_local_input(value: str, field: str, required_file: str, problems: list[tuple[str, str]]) -> str:
    """Every URI is confined (artifacts.confine); local inputs must hold what the job will read
    and, under the artifact root, be sealed artifacts.

    Returns a local input as an absolute file:// URI (the job runs in another
    working directory); a remote URI or a hub id as it is.
    """
    if not _is_local(value) and "://" not in value:
        return value  # a hub id
    try:
        uri = artifacts.confine(value, settings.allowed_roots(), field)
        if not uri.startswith("file://"):
            return uri
        artifacts.open_input(uri, field, verify=False)  # the job checks the hashes
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return value
    from slmops.core.datasets import split_exists

    if not split_exists(uri, required_file):  # a JSONL file, or a split's Parquet shards
        problems.append((field, f"{value!r} has no {required_file}"))
    return uri


def _method(spec: training_pb2.TrainingSpec, problems: list[tuple[str, str]]) -> str:
    if spec.method in METHODS:
        return METHODS[spec.method]
    names = ", ".join(training_pb2.TrainingMethod.Name(m) for m in METHODS)
    if spec.method == training_pb2.TRAINING_METHOD_UNSPECIFIED:
        problems.append(("spec.method", f"is required: one of {names}"))
    else:
        problems.append(("spec.method", f"unknown method {spec.method}; one of {names}"))
    return ""


def _inputs(raw: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    """Local inputs confined and made absolute, in place."""
    if raw["base"]["model"]:
        raw["base"]["model"] = check_local_input(
            raw["base"]["model"], "spec.base.model", "config.json", problems
        )
    if raw["dataset_uri"]:
        raw["dataset_uri"] = check_local_input(
            raw["dataset_uri"], "spec.dataset_uri", "train.jsonl", problems
        )
    for index, adapter in enumerate(raw.get("adapters", [])):
        if adapter["dataset_uri"]:
            adapter["dataset_uri"] = check_local_input(
                adapter["dataset_uri"], f"spec.adapters[{index}].dataset_uri", "train.jsonl", problems
            )
    distill = raw.get("distill")
    if distill and distill["teacher"]:
        distill["teacher"] = check_local_input(
            distill["teacher"], "spec.distill.teacher", "config.json", problems
        )


def from_proto(spec: training_pb2.TrainingSpec, *, deep: bool = True) -> TrainingConfig:
    """Validate a TrainingSpec and apply its defaults; one InvalidSpec lists every problem.

    With `deep`, the recipe also looks inside the inputs (model config,
    dataset columns, teacher vocabulary) the way the job will.
    """
    from slmops.training.recipes import registry

    problems: list[tuple[str, str]] = []
    method = _method(spec, problems)
    raw: dict[str, Any] = {
        "method": method or "sft_distill",
        "base": _base(spec, problems),
        "dataset_uri": spec.dataset_uri.strip(),
        "hyperparameters": _hyperparameters(spec.hyperparameters),
        "resources": _resources(spec, problems),
        "max_failures": {0: 3, -1: -1}.get(spec.max_failures, spec.max_failures),
        "output_uri": spec.output_uri.strip(),
        "labels": dict(spec.labels),
        **_sections(spec, method, problems),
    }
    _inputs(raw, problems)
    try:
        config = TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc))
        config = None
    if method:
        recipe = registry.get(method)
        recipe.check_spec(raw, problems)
        if config is not None and not problems and deep:
            recipe.check_inputs(config, problems)
    collect(problems)
    assert config is not None
    return config
