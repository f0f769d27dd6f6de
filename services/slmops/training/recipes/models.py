"""Loading the model a recipe trains, and saving what it produces (worker side)."""

from __future__ import annotations

import json
import os
from typing import Any

from slmops.training import chat, model_init
from slmops.training.trainer_kit import WorkerContext

LOSS_CURVE = "loss_curve.png"
BASE_FILE = "base_model.json"  # beside an adapter: the base it applies to


def tokenizer(ctx: WorkerContext) -> Any:
    """The base's tokenizer with the chat template the run uses (spec.chat_template, when named)."""
    tok = model_init.load_tokenizer(model_init.resolve_model(ctx.config.base.model))
    chat.apply(tok, ctx.config.chat_template)
    return tok


def base_model(ctx: WorkerContext, tok: Any) -> Any:
    """The base in float32: pretrained weights, or seeded fresh ones from its config."""
    config = ctx.config
    return model_init.load_model(
        config.base, model_init.resolve_model(config.base.model), tok, config.hyperparameters.seed
    )


def lora_config(ctx: WorkerContext, model: Any) -> Any:
    """peft's LoraConfig from the spec (every linear layer but the LM head when no targets are named)."""
    from peft import LoraConfig

    lora = ctx.config.lora
    assert lora is not None
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )


def loss_curve(history: list[dict[str, Any]], path: str, title: str) -> None:
    """A PNG of training and validation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_checkpoint(model: Any, tok: Any, history: list[dict[str, Any]], title: str) -> Any:
    """save(folder) writing a full model: safetensors, config, tokenizer (with its chat template), loss curve."""

    def save(folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        model_init.set_special_tokens(model.config, tok)
        eos = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = model_init.stop_ids(tok, eos)
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        chat.save(folder, tok)
        loss_curve(history, os.path.join(folder, LOSS_CURVE), title)

    return save


def save_adapter(peft_model: Any, tok: Any, base: str, history: list[dict[str, Any]], title: str) -> Any:
    """save(folder) writing a peft adapter, its tokenizer, the base it applies to and a loss curve."""

    def save(folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        peft_model.save_pretrained(folder)
        tok.save_pretrained(folder)
        chat.save(folder, tok)
        with open(os.path.join(folder, BASE_FILE), "w", encoding="utf-8") as fh:
            json.dump({"base_model": base}, fh)
        loss_curve(history, os.path.join(folder, LOSS_CURVE), title)

    return save
