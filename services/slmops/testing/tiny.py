"""Tiny language models built from a config, with a tokenizer trained on the spot.

No weights can be downloaded on the build machines, so tests, the demo and the
benchmarks make their models here. The result is an ordinary Hugging Face model
folder (config, safetensors weights, tokenizer files) that every stage takes
exactly like a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slmops.core.model_files import count_parameters

__all__ = ["build_model", "count_parameters", "train_tokenizer"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
ARCHITECTURES = ("qwen2", "llama")


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 300) -> Path:
    """Train a byte-level BPE tokenizer and save it as a transformers tokenizer folder.

    With vocab_size close to 256 + specials, nearly every byte is its own token,
    which suits small arithmetic and string tasks (each digit is one token).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 256 + len(SPECIAL_TOKENS)),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1],
        unk_token=None,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def build_model(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    architecture: str = "qwen2",
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = True,
    vocab_size: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    **overrides: Any,
) -> Path:
    """Save a randomly initialised model of the given shape beside its tokenizer.

    vocab_size: the embedding's rows (default: the tokenizer's size); a larger
    one gives a real model's shape while the tokenizer uses the first ids.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {architecture!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[architecture]
    config = config_cls(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size or hidden_size * 4,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        # The ONNX Runtime GenAI builder copies these ids; null ones break loading.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
