"""The training job's configuration: the pydantic models that are the spec.

The constraints live on the models (`Field(ge=..., le=...)`), so the service
at `Create` (training/spec.py turns the protobuf into these) and the Ray job
(training/job.py) validate with the same models. Recipes read these models;
this module imports nothing of the training package but the recipes' section
models (recipes/sections.py, a leaf).
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, Field

from slmops.api.v1 import training_pb2
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
    # The student's chat template: "" keeps the base's, a shipped name (chatml) or a .jinja file URI.
    chat_template: str = ""

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
