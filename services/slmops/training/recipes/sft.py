"""SFT_DISTILL: supervised on the teacher's answers, loss on the answer tokens only.

The student is the base model's weights, or (with `base.from_config`) a new,
usually smaller, model in the base's configuration with overrides. Optional
packing puts several examples in one sequence (TRL's best-fit packing).
"""

from __future__ import annotations

from typing import Any

from slmops.training import trainer_kit
from slmops.training.recipes import models
from slmops.training.trainer_kit import WorkerContext

PHASE = "train"


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    tok = models.tokenizer(ctx)
    model = models.base_model(ctx, tok)
    train_set, validation = data["train"]
    trainer = trainer_kit.make_trainer(ctx, PHASE, model, tok, train_set, validation)
    metrics = trainer_kit.train(ctx, trainer, PHASE)
    metrics["parameters"] = float(sum(p.numel() for p in model.parameters()))
    history = trainer.state.log_history
    trainer_kit.finish(ctx, models.save_checkpoint(model, tok, history, ctx.config.method), metrics)
