"""Tiny models shared by the predictor and conversion tests, built once per pytest session.

Each builder takes pytest's `tmp_path_factory` and caches its folder under the
session's base temp dir (built in a scratch folder, then renamed into place),
so every test module that asks gets the same folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

TEXTS = [
    "hello world, this is a tiny model",
    "the quick brown fox jumps over the lazy dog",
    "question: what is 2 + 3? answer: 5",
    "user: hi there\nassistant: hello, how can I help?",
] * 8


def _cached(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    base = factory.getbasetemp() / "slmops-tiny-models"
    target = base / name
    if target.is_dir():
        return target
    scratch = base / f".{name}.building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    build(scratch)
    scratch.rename(target)
    return target


def tiny_checkpoint(factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen2 checkpoint (hidden 64, ~300-token byte-level BPE), seed 0."""

    def build(out: Path) -> None:
        from slmops.testing import tiny

        tokenizer_dir = tiny.train_tokenizer(TEXTS, out.parent / f"{out.name}-tokenizer", 300)
        tiny.build_model(out, tokenizer_dir, architecture="qwen2", hidden_size=64,
                         num_hidden_layers=2, max_position_embeddings=128, seed=0)  # fmt: skip

    return _cached(factory, "qwen2-tiny", build)


def tiny_llama_checkpoint(factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama checkpoint with an untied LM head (hidden 64), seed 0, sharing the Qwen2 tokenizer texts."""

    def build(out: Path) -> None:
        from slmops.testing import tiny

        tokenizer_dir = tiny.train_tokenizer(TEXTS, out.parent / f"{out.name}-tokenizer", 300)
        tiny.build_model(out, tokenizer_dir, architecture="llama", hidden_size=64, num_hidden_layers=2,
                         max_position_embeddings=128, tie_word_embeddings=False, seed=0)  # fmt: skip

    return _cached(factory, "llama-tiny", build)


def tiny_onnx(factory: pytest.TempPathFactory, precision: str = "int4") -> Path:
    """tiny_checkpoint converted for ORT GenAI (CPU) by the model builder, without Olive."""
    checkpoint = tiny_checkpoint(factory)

    def build(out: Path) -> None:
        from onnxruntime_genai.models.builder import create_model

        cache = out.parent / f"{out.name}-cache"
        create_model(str(checkpoint), str(checkpoint), str(out), precision, "cpu", str(cache),
                     hf_remote=False)  # fmt: skip
        shutil.rmtree(cache, ignore_errors=True)

    return _cached(factory, f"qwen2-tiny-{precision}", build)


def copy_with(folder: Path, dest: Path, edit: Callable[[Path], None]) -> Path:
    """A copy of a model folder with one change made by edit(copy)."""
    shutil.copytree(folder, dest)
    edit(dest)
    return dest


# name: (seed, rank, adapted modules). beta adapts fewer modules, at another rank.
TINY_ADAPTERS = {
    "alpha": (1, 4, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "beta": (2, 8, ("q_proj", "v_proj", "down_proj")),
}


def random_lora(checkpoint: Path, out: Path, seed: int, rank: int, modules: tuple[str, ...]) -> Path:
    """A peft LoRA adapter with random A and B (so it changes the output), saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(modules), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def tiny_adapters(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random peft LoRA adapters for tiny_checkpoint: {"alpha": folder, "beta": folder}."""
    checkpoint = tiny_checkpoint(factory)

    def build(out: Path) -> None:
        for name, (seed, rank, modules) in TINY_ADAPTERS.items():
            random_lora(checkpoint, out / name, seed, rank, modules)

    folder = _cached(factory, "qwen2-tiny-adapters", build)
    return {name: folder / name for name in TINY_ADAPTERS}


def build_onnx_with_adapters(
    checkpoint_dir: str | Path,
    adapters: Mapping[str, str | Path],
    out_dir: str | Path,
    precision: str = "fp32",
    extra_options: Mapping[str, str] | None = None,
) -> Path:
    """Build `out_dir` for ORT GenAI (CPU): the base model plus `adapters/<name>.onnx_adapter` each.

    The conversion stage's Olive workflow with adapters; the adapters are
    checked (AdapterBuildError) before anything is built. Returns out_dir.
    """
    from slmops.conversion import onnx_adapters
    from slmops.conversion.olive_convert import ConversionError, convert

    onnx_adapters.plan(adapters, precision)  # refuse before building
    try:
        convert(checkpoint_dir, out_dir, precision, "cpu", extra_options, adapters=adapters)
    except ConversionError as exc:
        raise onnx_adapters.AdapterBuildError(str(exc)) from None
    return Path(out_dir)


def tiny_onnx_with_adapters(factory: pytest.TempPathFactory, precision: str = "fp32") -> Path:
    """tiny_checkpoint for ORT GenAI with tiny_adapters as `adapters/<name>.onnx_adapter` files."""
    checkpoint, adapters = tiny_checkpoint(factory), tiny_adapters(factory)

    def build(out: Path) -> None:
        build_onnx_with_adapters(checkpoint, adapters, out, precision=precision)

    return _cached(factory, f"qwen2-tiny-adapters-{precision}", build)


def chatml_checkpoint(root: Path, texts: list[str], **model_options: object) -> Path:
    """A 2-layer Qwen2 under root/checkpoint with a ChatML tokenizer trained on texts; generation stops
    at the end of a turn too. model_options go to `tiny.build_model` (e.g. initializer_range)."""
    from transformers import AutoTokenizer, GenerationConfig

    from slmops.core.chat_template import CHATML, SHIPPED_TOKENS
    from slmops.testing import tiny

    tokenizer_dir = tiny.train_tokenizer(texts, root / "tokenizer", 300)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SHIPPED_TOKENS["chatml"])})
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(tokenizer_dir)
    folder = tiny.build_model(root / "checkpoint", tokenizer_dir, hidden_size=64, num_hidden_layers=2,
                              max_position_embeddings=128, seed=0, **model_options)  # fmt: skip
    generation = GenerationConfig.from_pretrained(folder)
    generation.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    generation.save_pretrained(folder)
    return folder
