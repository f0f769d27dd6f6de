"""Decode speed: the predictor's ORT GenAI int4 engine against transformers fp32 `generate`.

Both run the same student-shaped model (random weights: speed does not depend
on their values) at batch 1, greedy, for a fixed number of new tokens, after a
warm-up. The int4 model comes from the conversion stage's Olive workflow.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops.bench.registry import Outcome, register

SHAPE: dict[str, Any] = {
    "architecture": "qwen2",
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 1408,
    "max_position_embeddings": 512,
}
VOCAB_SIZE = 512
NEW_TOKENS = 128
REPEATS = 3
PROMPTS = ["12+34=", "The answer is", "def add(a, b):", "Hello, world", "7*8=", "Once upon a time"]


def _corpus() -> list[str]:
    words = [
        "model",
        "token",
        "answer",
        "small",
        "language",
        "teacher",
        "student",
        "distill",
        "serve",
        "eval",
    ]
    lines = [f"{a}+{b}={a + b}" for a in range(50) for b in range(20)]
    lines += [" ".join(words[(i + j) % len(words)] for j in range(8)) for i in range(200)]
    return lines + PROMPTS


def build_models(work: Path) -> tuple[Path, Path, int]:
    """(HF fp32 folder, ORT GenAI int4 folder, parameter count)."""
    from slmops.conversion.olive_convert import convert
    from slmops.testing.tiny import build_model, count_parameters, train_tokenizer

    tokenizer = train_tokenizer(_corpus(), work / "tokenizer", vocab_size=VOCAB_SIZE)
    hf_dir = build_model(work / "hf", tokenizer, seed=0, **SHAPE)
    onnx_dir = work / "int4"
    convert(hf_dir, onnx_dir, precision="int4", execution_provider="cpu")
    return hf_dir, onnx_dir, count_parameters(hf_dir)


def pick_prompt(engine: Any) -> str:
    """A prompt the random-weight model decodes for NEW_TOKENS tokens without meeting EOS."""
    for prompt in PROMPTS:
        if engine.generate(prompt, max_tokens=NEW_TOKENS, temperature=0.0).completion_tokens == NEW_TOKENS:
            return prompt
    raise RuntimeError(
        f"every benchmark prompt meets EOS before {NEW_TOKENS} tokens; change PROMPTS or the seed"
    )


class TransformersDecoder:
    """The baseline: transformers fp32 `generate`, forced to exactly NEW_TOKENS new tokens."""

    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()

    def tokens_per_second(self, prompt: str, new_tokens: int = NEW_TOKENS) -> float:
        inputs = self.tokenizer(prompt, return_tensors="pt")
        with self.torch.inference_mode():
            start = time.perf_counter()
            out = self.model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            seconds = time.perf_counter() - start
        return (out.shape[1] - inputs["input_ids"].shape[1]) / seconds


def engine_tokens_per_second(engine: Any, prompt: str, new_tokens: int = NEW_TOKENS) -> float:
    start = time.perf_counter()
    generation = engine.generate(prompt, max_tokens=new_tokens, temperature=0.0)
    return generation.completion_tokens / (time.perf_counter() - start)


def measure(onnx_dir: Path, hf_dir: Path) -> tuple[float, float, str]:
    """Median (ORT GenAI, transformers) tokens/s, runs interleaved so both see the same machine load."""
    from slmops.predictor.loading import load_engine

    engine = load_engine(str(onnx_dir))
    try:
        prompt = pick_prompt(engine)  # also the engine's warm-up
        baseline = TransformersDecoder(hf_dir)
        baseline.tokens_per_second(prompt, 16)  # warm-up
        ort, hf = [], []
        for _ in range(REPEATS):
            ort.append(engine_tokens_per_second(engine, prompt))
            hf.append(baseline.tokens_per_second(prompt))
        return statistics.median(ort), statistics.median(hf), prompt
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()


@register("decode_tokens_per_second")
def decode_tokens_per_second() -> Outcome:
    """Decode tokens/s at batch 1, greedy: ORT GenAI int4 (predictor engine) vs transformers fp32 generate."""
    import torch

    with tempfile.TemporaryDirectory(prefix="slmops-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        hf_dir, onnx_dir, parameters = build_models(work)
        build_seconds = time.perf_counter() - started
        ort, baseline, prompt = measure(onnx_dir, hf_dir)
        vocab = json.loads((hf_dir / "config.json").read_text())["vocab_size"]
        hf_mb = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) / 1e6
        onnx_mb = sum(p.stat().st_size for p in onnx_dir.glob("model.onnx*")) / 1e6
    return Outcome(
        value=ort,
        baseline=baseline,
        unit="tokens/s",
        value_label="ort_genai_int4_tokens_per_second",
        baseline_label="transformers_fp32_tokens_per_second",
        details={
            "shape": f"qwen2 hidden {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, "
            f"vocab {vocab}, {parameters / 1e6:.1f}M parameters (random weights)",
            "new_tokens": NEW_TOKENS,
            "repeats": f"{REPEATS}, interleaved; medians reported",
            "prompt": prompt,
            "fp32_safetensors_mb": round(hf_mb, 1),
            "int4_onnx_mb": round(onnx_mb, 1),
            "torch_threads": torch.get_num_threads(),
            "build_and_convert_seconds": round(build_seconds, 1),
        },
    )
