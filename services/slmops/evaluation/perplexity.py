"""Perplexity of held-out text under a model folder: Hugging Face (transformers) or ONNX Runtime GenAI.

An item is a text, or a (context, text) pair whose context only conditions the
text (a prompt and its expected answer): the text's tokens are scored, the
context's are not. A context may be a conversation (the turns before an
answer, [{role, content}, ...]): it is rendered with the model folder's chat
template and its generation prompt, as the predictor renders a
`/chat/completions` request (the plain transcript for a model without one).

Perplexity is exp of the token-weighted mean negative log-likelihood,
sum(NLL of every scored token of every item) / (number of those tokens), not a
mean of per-item perplexities. A sequence's first token has nothing to be
predicted from and is never scored.

Both runtimes score the same tokens the same way: the sequence (context + text)
is tokenized whole, the text starts where it stops agreeing with the context's
own tokens, and a sequence longer than max_length (capped at the model's
context window) loses its oldest context tokens first, then its end. The
log-softmax is taken in numpy, in float32, for both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from slmops.core import artifacts, chat_template
from slmops.core.errors import InvalidSpec

Pair = tuple[str, str]  # (context, text): the text is scored, the context only conditions it
Turns = list[dict[str, str]]  # a conversation before its answer: rendered with the chat template
Item = str | Pair | tuple[Turns, str]
Encode = Callable[[str], list[int]]


def _pairs(items: Iterable[str | Pair]) -> list[Pair]:
    return [item if isinstance(item, tuple) else ("", item) for item in items]


def _rendered(model_dir: str | Path, items: Iterable[Item]) -> list[str | Pair]:
    """Items whose conversation contexts are rendered as the predictor renders a chat request."""
    template, config = chat_template.read_template(model_dir)
    out: list[str | Pair] = []
    for item in items:
        if isinstance(item, tuple) and isinstance(item[0], list):
            try:
                turns = chat_template.check_messages(item[0])
                context = chat_template.render(template, turns, config) if template else None
            except InvalidSpec as exc:
                raise ValueError(f"the chat template refused a conversation: {exc}") from None
            out.append((context if context is not None else chat_template.fallback_prompt(turns), item[1]))
        else:
            out.append(item)  # type: ignore[arg-type]
    return out


def _sequence(encode: Encode, context: str, text: str, max_length: int) -> tuple[list[int], int]:
    """(token ids, index of the first scored one) of context + text, at most max_length ids."""
    ids = encode(context + text)
    context_ids = encode(context) if context else []
    start = 0
    while start < min(len(ids), len(context_ids)) and ids[start] == context_ids[start]:
        start += 1
    drop = min(max(len(ids) - max_length, 0), max(start - 1, 0))  # keep one context token to predict from
    ids, start = ids[drop:][:max_length], start - drop
    return ids, max(start, 1)


def _nll(rows: np.ndarray, targets: list[int]) -> float:
    """Summed negative log-likelihood of targets; rows[i] are the logits that predict targets[i]."""
    rows = rows.astype(np.float32, copy=False)
    shifted = rows - rows.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -float(log_probs[np.arange(len(targets)), targets].sum())


def _score(items: Iterable[str | Pair], encode: Encode, max_length: int,
           rows_for: Callable[[list[int], int], np.ndarray]) -> float:  # fmt: skip
    """exp(total NLL / scored tokens); rows_for(ids, first) gives the logits predicting ids[first:]."""
    total, count = 0.0, 0
    for context, text in _pairs(items):
        ids, first = _sequence(encode, context, text, max_length)
        if len(ids) <= first:
            continue
        total += _nll(rows_for(ids, first), ids[first:])
        count += len(ids) - first
    if count == 0:
        raise ValueError("no text long enough to score (each needs a token after its first)")
    return math.exp(total / count)


def perplexity_hf(model_dir: str | Path, items: Iterable[Item], max_length: int = 512) -> float:
    """Perplexity of texts (or of (context, text) pairs' texts) under a Hugging Face causal LM folder,
    in fp32 on the CPU; one forward pass per item."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False,
                                                 dtype=torch.float32).eval()  # fmt: skip
    window = getattr(model.config, "max_position_embeddings", None) or max_length

    def rows_for(ids: list[int], first: int) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0, first - 1 : -1].float().numpy()

    def encode(text: str) -> list[int]:
        return list(tokenizer(text)["input_ids"])

    return _score(_rendered(model_dir, items), encode, min(max_length, window), rows_for)


def _all_positions(og: Any, model: Any, ids: list[int], first: int) -> np.ndarray | None:
    """The logits predicting ids[first:] from one pass over the whole sequence; None when the model
    returns only the last position's (the model builder's exports return them all)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids))
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([ids], dtype=np.int32))
    logits = np.asarray(generator.get_output("logits"))
    rows = logits.reshape(-1, logits.shape[-1])
    return rows[first - 1 : -1] if len(rows) == len(ids) else None


def _step_by_step(og: Any, model: Any, ids: list[int], first: int) -> np.ndarray:
    """The logits predicting ids[first:]: the context at once, then one token a step, reading the last
    position's logits after each."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids))
    generator = og.Generator(model, params)
    rows = []
    for chunk in [ids[:first]] + [[token] for token in ids[first:-1]]:
        generator.append_tokens(np.asarray([chunk], dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"))
        rows.append(logits.reshape(-1, logits.shape[-1])[-1])
    return np.stack(rows)


def perplexity_onnx(model_dir: str | Path, items: Iterable[Item], max_length: int = 512) -> float:
    """The same under an ONNX Runtime GenAI model folder (genai_config.json), through onnxruntime_genai:
    every position's logits from one pass when the model returns them, else one token a step."""
    import onnxruntime_genai as og

    config = json.loads((Path(model_dir) / "genai_config.json").read_text(encoding="utf-8"))
    window = int(config.get("model", {}).get("context_length") or max_length)
    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)

    last_only: list[bool] = []  # set once the model has shown it returns the last position only

    def rows_for(ids: list[int], first: int) -> np.ndarray:
        if not last_only:
            rows = _all_positions(og, model, ids, first)
            if rows is not None:
                return rows
            last_only.append(True)  # as conversion makes them (conversion/last_logits.py)
        return _step_by_step(og, model, ids, first)

    def encode(text: str) -> list[int]:
        return [int(t) for t in tokenizer.encode(text)]

    return _score(_rendered(model_dir, items), encode, min(max_length, window), rows_for)


def perplexity(model_uri_or_dir: str | Path, items: Iterable[Item], max_length: int = 512) -> float:
    """Perplexity under the model in a local folder (a path or a file:// URI), by what the folder holds:
    genai_config.json -> ONNX Runtime GenAI, config.json -> Hugging Face. Lower is better."""
    text = str(model_uri_or_dir)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"perplexity needs a local model folder, not {text}")
    folder = artifacts.local_path(text)
    if (folder / "genai_config.json").is_file():
        return perplexity_onnx(folder, items, max_length)
    if (folder / "config.json").is_file():
        return perplexity_hf(folder, items, max_length)
    raise ValueError(f"{folder} holds neither an ONNX Runtime GenAI model (genai_config.json) "
                     f"nor a Hugging Face checkpoint (config.json)")  # fmt: skip
