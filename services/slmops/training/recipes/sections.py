"""The method-specific sections of a training spec, as pydantic models.

They carry the constraints of their fields, so the service at `Create` and the
Ray job validate a spec with the same models. Importing this module is cheap
(no torch): the service imports it on every request.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field, model_validator

# Search dimensions a recipe may declare, and the config field each one sets (shared with the CLI).
from slmops.core.search_space import SEARCHABLE as SEARCHABLE


class LoraSettings(BaseModel):
    """LORA, QLORA and MULTI_ADAPTER: the low-rank adapter (peft)."""

    rank: int = Field(8, ge=1, le=1024)
    alpha: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=list)  # empty: every linear layer but the LM head
    adapter_name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    merge: bool = False


class DistillSettings(BaseModel):
    """LOGIT_DISTILL: where the teacher's distribution comes from, and the loss."""

    teacher: str = ""  # online teacher model; empty: offline, from the dataset's stored top-k
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the distillation loss; 1 - alpha on cross-entropy
    jsd_beta: float = Field(0.5, gt=0.0, lt=1.0)


INTEGER_FIELDS = {"batch_size", "epochs", "lora_rank", "lora_alpha"}


def _is_number(text: str, integer: bool) -> bool:
    """Whether a choice value parses as the searched field's type (the job reads it with float())."""
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number) and (not integer or number.is_integer())


class SearchDimension(BaseModel):
    name: str
    distribution: Literal["uniform", "loguniform", "randint", "choice"]
    low: float = 0.0
    high: float = 0.0
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bounds(self) -> SearchDimension:
        if self.distribution == "choice":
            if not self.values:
                raise ValueError("a choice needs values")
            bad = [v for v in self.values if not _is_number(v, integer=self.name in INTEGER_FIELDS)]
            if bad:
                kind = "integers" if self.name in INTEGER_FIELDS else "numbers"
                raise ValueError(f"{self.name} takes {kind}, not {', '.join(map(repr, bad))}")
        elif not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        elif self.distribution == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class SearchSettings(BaseModel):
    """A Ray Tune search with ASHA early stopping over a declared space."""

    space: list[SearchDimension] = Field(min_length=1)
    trials: int = Field(4, ge=1, le=1000)
    metric: Literal["eval_loss", "train_loss"] = "eval_loss"
    mode: Literal["min", "max"] = "min"
    max_concurrent_trials: int = Field(1, ge=1, le=256)
    grace_period: int = Field(1, ge=1, le=10_000)
