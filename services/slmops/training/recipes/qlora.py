"""QLORA: LoRA on a base loaded in 4 bits (bitsandbytes nf4).

The base's weights are quantized on load and stay frozen; only the adapter
trains, in float32 on the CPU and bfloat16 compute on CUDA. Merging
(`lora.merge`) reloads the base in float32 and merges the adapter into it,
so the merged checkpoint is not quantized.
"""

from __future__ import annotations

import tempfile
from typing import Any

from slmops.training import model_init, trainer_kit
from slmops.training.recipes import lora, models
from slmops.training.trainer_kit import WorkerContext

PHASE = "train"


def quantized_base(ctx: WorkerContext, tok: Any) -> Any:
    """The pretrained base in nf4, prepared for k-bit training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    on_gpu = ctx.device.type == "cuda"
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if on_gpu else torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_init.resolve_model(ctx.config.base.model),
        quantization_config=quantization,
        dtype=torch.float32,
        device_map={"": str(ctx.device)},
    )
    model_init.set_special_tokens(model.config, tok)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=ctx.config.hyperparameters.gradient_checkpointing
    )


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    tok = models.tokenizer(ctx)
    model, trainer, metrics = lora.train_adapter(ctx, quantized_base(ctx, tok), tok, data["train"], PHASE)
    history = trainer.state.log_history
    assert ctx.config.lora is not None
    if not ctx.config.lora.merge:
        save = models.save_adapter(model, tok, ctx.config.base.model, history, f"qlora (rank {ctx.config.lora.rank})")
        trainer_kit.finish(ctx, save, metrics)
        return
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="slmops-qlora-") as folder:
        model.save_pretrained(folder)
        full = PeftModel.from_pretrained(models.base_model(ctx, tok), folder).merge_and_unload()
    trainer_kit.finish(ctx, models.save_checkpoint(full, tok, history, "qlora, merged"), metrics)
