"""FULL: every weight of a pretrained base fine-tuned on a user dataset.

Unlike SFT_DISTILL, the loss covers every token: the prompt as well as the
completion of prompt/completion records, or the whole of a `text` record.
The driver tokenizes with `Labels.ALL`; training is the same trainer.
"""

from __future__ import annotations

from typing import Any

from slmops.training.recipes import sft
from slmops.training.trainer_kit import WorkerContext


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    sft.train(ctx, data)
