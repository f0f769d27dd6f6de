"""Keep the model builder's own embedding layer when Olive 0.13 runs it.

Olive 0.13.0's ModelBuilder pass replaces the builder's `Model.make_embedding`
(on every run, process-wide) with a version written for pre-quantized
checkpoints only. For an ordinary checkpoint that version ignores the
builder's shared (tied) embeddings, so `shared_embeddings=true` has no effect:
the embedding matrix stays a separate float copy beside the LM head (FACTS.md:
for the Qwen2.5-0.5B shape that is the difference between 0.87x and 0.32x of
the checkpoint's size). This shim routes Olive's replacement back to the
builder's method unless the checkpoint is pre-quantized (an embedding with
`qweight`), the case Olive wrote it for.

Olive 0.13 also sends usage telemetry to a Microsoft endpoint; its
`OLIVE_DISABLE_TELEMETRY=1` is read only after a first heartbeat is sent.
`no_telemetry` turns it off before anything is sent: conversion never calls a
host the operator did not name.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
_installed = False


def no_telemetry() -> None:
    """Olive's telemetry off for this process, before its logger is first made (and would send a heartbeat)."""
    import os

    os.environ["OLIVE_DISABLE_TELEMETRY"] = "1"
    try:
        telemetry = importlib.import_module("olive.telemetry.telemetry")
    except ImportError:  # an Olive without telemetry
        return
    if hasattr(telemetry.Telemetry, "_is_ci_environment"):  # the check that skips the heartbeat
        telemetry.Telemetry._is_ci_environment = staticmethod(lambda: True)
    # A disabled logger still queued each run's "OliveAction" events and posted them at exit: with no
    # logger at all, `Telemetry.log` returns at once.
    if hasattr(telemetry.Telemetry, "_create_logger"):
        telemetry.Telemetry._create_logger = lambda self: None
    made = getattr(telemetry.Telemetry, "_instance", None)
    if made is not None and getattr(made, "_logger", None) is not None:
        made.disable_telemetry()
        made._logger = None


def keep_builder_embeddings() -> None:
    """Install the routing once per process, before Olive's first ModelBuilder run."""
    global _installed
    if _installed:
        return
    olive_builder = importlib.import_module("olive.passes.onnx.model_builder")
    genai_builder = importlib.import_module("onnxruntime_genai.models.builder")
    original: Callable[..., Any] = genai_builder.Model.make_embedding
    olive_version: Callable[..., Any] = olive_builder.patched_make_embedding
    if getattr(original, "__module__", "") == olive_builder.__name__:
        log.warning("Olive already replaced the builder's make_embedding; tied embeddings stay unshared")
        return

    def make_embedding(self: Any, embedding: Any) -> Any:
        if hasattr(embedding, "qweight"):
            return olive_version(self, embedding)
        return original(self, embedding)

    make_embedding.__module__ = __name__
    # Olive's maybe_patch_quant() reads this module global each time it patches the builder.
    olive_builder.patched_make_embedding = make_embedding
    _installed = True
