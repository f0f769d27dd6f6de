"""FULL: every weight of a pretrained base fine-tuned on a user's own dataset.

Besides prompt/completion records (loss on the completion, as TRL does for
prompt-completion data), FULL takes plain-text records (`{"text": ...}`),
whose every token is a label: continued pre-training on a team's documents.
SFT_DISTILL reads only prompt/completion records (a teacher's answers).
Training is the same trainer.
"""

from __future__ import annotations

from typing import Any

from slmops.training.recipes import sft
from slmops.training.trainer_kit import WorkerContext


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    sft.train(ctx, data)
