"""Tiny models shared by the predictor and conversion tests, built once per pytest session.

Each builder takes pytest's `tmp_path_factory` and caches its folder under the
session's base temp dir (built in a scratch folder, then renamed into place),
so every test module that asks gets the same folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
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
        from slmops.models import tiny

        tokenizer_dir = tiny.train_tokenizer(TEXTS, out.parent / f"{out.name}-tokenizer", 300)
        tiny.build_model(out, tokenizer_dir, architecture="qwen2", hidden_size=64,
                         num_hidden_layers=2, max_position_embeddings=128, seed=0)  # fmt: skip

    return _cached(factory, "qwen2-tiny", build)


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
