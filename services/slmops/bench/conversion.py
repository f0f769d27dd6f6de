"""Conversion: size and decode speed of what the conversion stage makes, in the Qwen2.5-0.5B shape.

A model with random weights in the Qwen2.5-0.5B shape (494M parameters, a tied
151,936 x 896 embedding) is saved in fp16 and fp32, and the conversion's own
`convert` (Olive, with its defaults) makes int4, int8 and fp32 ORT GenAI
folders from it. Size does not depend on the weights' values, nor does decode
speed. The models are built once per process and shared by both benchmarks.

- `int4_size_ratio_vs_fp16`: the int4 folder's bytes against the fp16
  checkpoint's safetensors.
- `ortgenai_int4_decode_speedup_vs_torch_fp32`: decode tokens/s at batch 1,
  greedy, of the int4 folder in the predictor's ORT GenAI engine against
  transformers fp32 `generate` on the same machine, runs interleaved.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops.bench.decode import PROMPTS, TransformersDecoder, _corpus, engine_tokens_per_second
from slmops.bench.registry import Outcome, register

SHAPE: dict[str, Any] = {  # Qwen/Qwen2.5-0.5B's config.json
    "architecture": "qwen2",
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
PRECISIONS = ("int4", "int8", "fp32")
NEW_TOKENS = 64
REPEATS = 3


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@functools.cache
def built() -> dict[str, Any]:
    """The fp16/fp32 checkpoints and one converted folder per precision, with their sizes and times."""
    from slmops.conversion.olive_convert import convert
    from slmops.testing.tiny import build_model, count_parameters, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-convert-"))
    atexit.register(shutil.rmtree, work, True)
    tokenizer = train_tokenizer(_corpus(), work / "tokenizer", vocab_size=512)
    fp32 = build_model(work / "hf-fp32", tokenizer, seed=0, **SHAPE)
    fp16 = build_model(work / "hf-fp16", tokenizer, seed=0, dtype="float16", **SHAPE)
    out: dict[str, Any] = {"fp32_dir": fp32, "fp16_dir": fp16, "parameters": count_parameters(fp32),
                           "fp16_bytes": _weights_bytes(fp16), "fp32_bytes": _weights_bytes(fp32), "folders": {}}  # fmt: skip
    for precision in PRECISIONS:
        started = time.perf_counter()
        result = convert(fp32, work / precision, precision, "cpu")
        out["folders"][precision] = {
            "dir": work / precision,
            "bytes": _folder_bytes(work / precision),
            "seconds": time.perf_counter() - started,
            "options": result["options"],
        }
    return out


@register("int4_size_ratio_vs_fp16")
def int4_size_ratio_vs_fp16() -> Outcome:
    """Bytes of the int4 ORT GenAI folder (conversion defaults) against the fp16 checkpoint, Qwen2.5-0.5B shape."""
    models = built()
    folders, fp16 = models["folders"], models["fp16_bytes"]
    details: dict[str, Any] = {
        "shape": f"Qwen2.5-0.5B ({models['parameters'] / 1e6:.0f}M parameters, random weights)",
        "fp16_checkpoint_mb": round(fp16 / 1e6, 1),
        "fp32_checkpoint_mb": round(models["fp32_bytes"] / 1e6, 1),
        "int4_options": folders["int4"]["options"],
    }
    for precision, folder in folders.items():
        details[f"{precision}_mb"] = round(folder["bytes"] / 1e6, 1)
        details[f"{precision}_ratio_vs_fp16"] = round(folder["bytes"] / fp16, 3)
        details[f"{precision}_convert_seconds"] = round(folder["seconds"], 1)
    return Outcome(
        value=float(folders["int4"]["bytes"]),
        baseline=float(fp16),
        unit="bytes",
        value_label="int4_folder_bytes",
        baseline_label="fp16_checkpoint_bytes",
        details=details,
    )


@register("ortgenai_int4_decode_speedup_vs_torch_fp32")
def ortgenai_int4_decode_speedup_vs_torch_fp32() -> Outcome:
    """Decode tokens/s, batch 1, greedy: int4 in ORT GenAI (predictor engine) vs transformers fp32, Qwen2.5-0.5B shape."""
    import torch

    from slmops.predictor.loading import load_engine

    models = built()
    engine = load_engine(str(models["folders"]["int4"]["dir"]))
    try:
        prompt = next(
            (
                p
                for p in PROMPTS
                if engine.generate(p, max_tokens=NEW_TOKENS, temperature=0.0).completion_tokens == NEW_TOKENS
            ),
            PROMPTS[0],
        )
        baseline = TransformersDecoder(models["fp32_dir"])
        baseline.tokens_per_second(prompt, 8)  # warm-up
        ort, hf = [], []
        for _ in range(REPEATS):
            ort.append(engine_tokens_per_second(engine, prompt, NEW_TOKENS))
            hf.append(baseline.tokens_per_second(prompt, NEW_TOKENS))
    finally:
        engine.close()
    return Outcome(
        value=statistics.median(ort),
        baseline=statistics.median(hf),
        unit="tokens/s",
        value_label="ort_genai_int4_tokens_per_second",
        baseline_label="transformers_fp32_tokens_per_second",
        details={
            "shape": f"Qwen2.5-0.5B ({models['parameters'] / 1e6:.0f}M parameters, random weights)",
            "new_tokens": NEW_TOKENS,
            "repeats": f"{REPEATS}, interleaved; medians reported",
            "ort_runs": [round(x, 1) for x in ort],
            "torch_runs": [round(x, 1) for x in hf],
            "torch_threads": torch.get_num_threads(),
            "int4_mb": round(models["folders"]["int4"]["bytes"] / 1e6, 1),
        },
    )
