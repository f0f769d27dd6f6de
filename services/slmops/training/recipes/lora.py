"""LORA: a low-rank adapter (peft) trained on a frozen base.

The output is the adapter as its own artifact (kind `adapter`: the peft
files, the tokenizer and `base_model.json` naming the base), or, with
`lora.merge`, the base with the adapter merged in (kind `checkpoint`).
"""

from __future__ import annotations

from typing import Any

from slmops.training import trainer_kit
from slmops.training.recipes import models
from slmops.training.trainer_kit import WorkerContext

PHASE = "train"


def trainable_parameters(model: Any) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": float(trainable), "parameters": float(total)}


def train_adapter(
    ctx: WorkerContext, base: Any, tok: Any, data: tuple[list, list], phase: str
) -> tuple[Any, Any, dict]:
    """(peft model, trainer, metrics) of one adapter trained on base."""
    from peft import get_peft_model

    model = get_peft_model(base, models.lora_config(ctx, base))
    train_set, validation = data
    trainer = trainer_kit.make_trainer(ctx, phase, model, tok, train_set, validation)
    metrics = trainer_kit.train(ctx, trainer, phase)
    metrics.update(trainable_parameters(model))
    return model, trainer, metrics


def output(ctx: WorkerContext, model: Any, tok: Any, history: list[dict[str, Any]]) -> Any:
    """save(folder): the adapter, or the base with it merged when asked."""
    assert ctx.config.lora is not None
    title = f"{ctx.config.method} (rank {ctx.config.lora.rank})"
    if ctx.config.lora.merge:
        return models.save_checkpoint(model.merge_and_unload(), tok, history, title)
    return models.save_adapter(model, tok, ctx.config.base.model, history, title)


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    tok = models.tokenizer(ctx)
    model, trainer, metrics = train_adapter(ctx, models.base_model(ctx, tok), tok, data["train"], PHASE)
    trainer_kit.finish(ctx, output(ctx, model, tok, trainer.state.log_history), metrics)
