"""Method name -> recipe: what each recipe reads and makes, and its own checks of a spec.

recipes/checks.py runs them with the checks every recipe shares: `check_spec`
looks at the spec alone (cheap, always); `inputs` looks inside the inputs the
way the job will (the base model's config, the dataset's first records, the
teacher's vocabulary), so bad input is refused with the field's name before
any Ray work starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmops.training.recipes.sections import SEARCHABLE

Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class Recipe:
    name: str
    module: str  # slmops.training.recipes.<module>, with train(ctx, data)
    sections: frozenset[str] = frozenset()  # optional spec sections it reads: lora, distill, adapters
    output_kind: str = "checkpoint"
    accepts_text: bool = False  # plain `text` records (loss on every token) besides prompt/completion
    extra_checks: tuple[Callable[[dict[str, Any], Problems], None], ...] = field(default_factory=tuple)

    def searchable(self) -> set[str]:
        return {
            name
            for name, (section, _) in SEARCHABLE.items()
            if section == "hyperparameters" or section in self.sections
        }

    def train(self, ctx: Any, data: Any) -> None:
        importlib.import_module(f"slmops.training.recipes.{self.module}").train(ctx, data)


def _pretrained(raw: dict[str, Any], problems: Problems) -> None:
    if raw["base"].get("from_config"):
        problems.append(
            ("spec.base.from_config", "QLORA quantizes pretrained weights; it cannot start from fresh ones")
        )


def _no_packing(raw: dict[str, Any], problems: Problems) -> None:
    if raw["hyperparameters"].get("packing"):
        problems.append(
            (
                "spec.hyperparameters.packing",
                "does not apply to LOGIT_DISTILL (positions carry the teacher's top-k)",
            )
        )


RECIPES = {
    r.name: r
    for r in (
        Recipe("sft_distill", "sft"),
        Recipe("full", "full", accepts_text=True),
        Recipe("lora", "lora", frozenset({"lora"}), output_kind="adapter"),
        Recipe("qlora", "qlora", frozenset({"lora"}), output_kind="adapter", extra_checks=(_pretrained,)),
        Recipe("logit_distill", "logit_distill", frozenset({"distill"}), extra_checks=(_no_packing,)),
        Recipe("multi_adapter", "multi_adapter", frozenset({"lora", "adapters"}), output_kind="adapter"),
    )
}


def get(method: str) -> Recipe:
    return RECIPES[method]


def output_kind(config: Any) -> str:
    recipe = RECIPES[config.method]
    if recipe.output_kind == "adapter" and config.lora is not None and config.lora.merge:
        return "checkpoint"
    return recipe.output_kind
