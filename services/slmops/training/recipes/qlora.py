"""QLORA: LoRA on a base loaded in 4 bits (bitsandbytes nf4).

The base's linear layers are quantized to nf4 on load, everything else
(embeddings, tied LM head, norms) stays in bfloat16, the checkpoint dtype of
most small models, and compute is in bfloat16 on the CPU as on CUDA; all of it
is frozen, and only the adapter trains (peft creates it in float32; TRL's
trainer casts a quantized model's adapter to bfloat16). For a 0.5B model in
bf16 this holds about 0.45 GB of weights where LORA's float32 base holds 2 GB.

Loading keeps the process's resident memory near that: the checkpoint is
read tensor by tensor with `pread` instead of memory-mapped, and glibc is
told to return large freed blocks to the system (see `_read_checkpoint` and
`_return_large_frees`). Merging (`lora.merge`) reloads the base in float32
and merges the adapter into it, so the merged checkpoint is not quantized.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from slmops.training import model_init, trainer_kit
from slmops.training.recipes import lora, models
from slmops.training.trainer_kit import WorkerContext

PHASE = "train"
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 1 << 20  # bytes: blocks this large are mapped on their own, and unmapped when freed


def _return_large_frees() -> None:
    """Have glibc's malloc give freed blocks of LARGE_BLOCK or more back to the system (no-op elsewhere).

    Quantizing allocates float copies of each weight between the small packed
    results that stay; on glibc's default (an mmap threshold that rises to
    32 MiB) those copies come from the heap, and the freed space between
    long-lived blocks stays resident: 0.5 GiB more at the end of loading a
    0.5B model, and the training steps' temporaries do the same. It applies to
    the whole worker process, which runs this one job.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    except (OSError, AttributeError):
        return


def _checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a local model folder; empty for a hub id or other formats."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    index = os.path.join(model_dir, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        return [os.path.join(model_dir, shard) for shard in shards]
    single = os.path.join(model_dir, SAFE_WEIGHTS_NAME)
    return [single] if os.path.isfile(single) else []


@contextlib.contextmanager
def _read_checkpoint(files: list[str]) -> Iterator[dict[str, Any]]:
    """The checkpoint's tensors as lazy slices, each read with `pread` when transformers loads it.

    transformers memory-maps safetensors itself: every page it reads stays in
    the resident set until loading ends, and for as long as a tensor kept in
    the checkpoint's dtype (the bf16 embedding) is a view of the mapping, which
    is the whole file then (1 GB for a 0.5B model). Read with `pread`, each
    tensor is a plain copy, freed once it is quantized or kept.
    """
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        slices: dict[str, Any] = {}
        for file in files:
            handle = stack.enter_context(safe_open(file, framework="pt", device="cpu", backend="pread"))
            slices.update({name: handle.get_slice(name) for name in handle.keys()})
        yield slices


def _load_nf4(model_dir: str, quantization: Any, device: str) -> Any:
    """The model with linear layers in nf4 and the rest in bfloat16."""
    import torch
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM

    options = {"quantization_config": quantization, "dtype": torch.bfloat16, "device_map": {"": device}}
    files = _checkpoint_files(model_dir)
    if not files:
        return AutoModelForCausalLM.from_pretrained(model_dir, **options)
    config = AutoConfig.from_pretrained(model_dir)
    # transformers loads a state dict of safetensors slices the way it loads its own (`slice[...]` per tensor);
    # the Auto class would deep-copy them, so the concrete class loads them.
    with _read_checkpoint(files) as slices:
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
            None, config=config, state_dict=slices, **options
        )
    model.config.name_or_path = model.name_or_path = model_dir
    return model


def quantized_base(ctx: WorkerContext, tok: Any) -> Any:
    """The pretrained base, linear layers in nf4 and the rest in bfloat16, frozen.

    Not `peft.prepare_model_for_kbit_training`: it casts every bfloat16
    parameter to float32 (the embedding alone from 0.27 to 0.54 GB for a 0.5B
    model). What else it does the trainer does: gradient checkpointing from
    the hyperparameters, with input gradients enabled for peft models.
    """
    import torch
    from transformers import BitsAndBytesConfig

    _return_large_frees()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = _load_nf4(model_init.resolve_model(ctx.config.base.model), quantization, str(ctx.device))
    model_init.set_special_tokens(model.config, tok)
    model.requires_grad_(False)
    return model


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    tok = models.tokenizer(ctx)
    model, trainer, metrics = lora.train_adapter(ctx, quantized_base(ctx, tok), tok, data["train"], PHASE)
    history = trainer.state.log_history
    assert ctx.config.lora is not None
    if not ctx.config.lora.merge:
        save = models.save_adapter(
            model, tok, ctx.config.base.model, history, f"qlora (rank {ctx.config.lora.rank})"
        )
        trainer_kit.finish(ctx, save, metrics)
        return
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="slmops-qlora-") as folder:
        model.save_pretrained(folder)
        full = PeftModel.from_pretrained(models.base_model(ctx, tok), folder).merge_and_unload()
    trainer_kit.finish(ctx, models.save_checkpoint(full, tok, history, "qlora, merged"), metrics)
