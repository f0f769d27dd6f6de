"""MULTI_ADAPTER: several named LoRA adapters on one base in one job, one per dataset.

Adapters train one after another on a fresh copy of the base. A finished
adapter goes into every later checkpoint, so a worker failure never retrains
it. The output folder holds `adapters/<name>/` side by side and
`base_model.json` naming the base they all apply to.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from slmops.training import chat, trainer_kit
from slmops.training.recipes import lora, models
from slmops.training.trainer_kit import WorkerContext


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    tok = models.tokenizer(ctx)
    metrics: dict[str, float] = {}
    names = [a.name for a in ctx.config.adapters]
    for name in names:
        done = os.path.join(ctx.done_dir(), name)
        if os.path.isfile(os.path.join(done, "metrics.json")):
            with open(os.path.join(done, "metrics.json"), encoding="utf-8") as fh:
                metrics.update({f"{name}.{k}": v for k, v in json.load(fh).items()})
            continue
        model, trainer, adapter_metrics = lora.train_adapter(
            ctx, models.base_model(ctx, tok), tok, data[name], name
        )
        if ctx.is_main:
            models.save_adapter(
                model, tok, ctx.config.base.model, trainer.state.log_history, f"adapter {name}"
            )(done)
            with open(os.path.join(done, "metrics.json"), "w", encoding="utf-8") as fh:
                json.dump(adapter_metrics, fh)
        trainer_kit.report_phase_done(ctx, name, adapter_metrics)
        metrics.update({f"{name}.{k}": v for k, v in adapter_metrics.items()})
    for key in ("train_loss", "eval_loss", "steps", "train_seconds"):
        values = [metrics[f"{n}.{key}"] for n in names if f"{n}.{key}" in metrics]
        if values:
            metrics[key] = sum(values) if key in ("steps", "train_seconds") else sum(values) / len(values)
    metrics["adapters"] = float(len(names))

    def save(folder: str) -> None:
        os.makedirs(os.path.join(folder, "adapters"), exist_ok=True)
        for name in names:
            shutil.copytree(os.path.join(ctx.done_dir(), name), os.path.join(folder, "adapters", name))
        with open(os.path.join(folder, models.BASE_FILE), "w", encoding="utf-8") as fh:
            json.dump({"base_model": ctx.config.base.model, "adapters": names}, fh)
        tok.save_pretrained(folder)
        chat.save(folder, tok)

    trainer_kit.finish(ctx, save, metrics)
