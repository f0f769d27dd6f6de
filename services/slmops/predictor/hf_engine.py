"""transformers engine: serves a Hugging Face checkpoint folder (no trust_remote_code).

A cohort is a batch of prompts padded on the left, decoded with a KV cache one
token at a time. LoRA adapters are peft adapter folders (in the checkpoint's
`adapters/<name>/`, or named on the command line); the base model and every
adapter share one set of weights, and each cohort switches to its adapter
before its step.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slmops.core import chat_template
from slmops.core.errors import InvalidSpec
from slmops.core.model_files import usable_cores
from slmops.predictor.engines import DecodingEngine, Sampling


def find_adapters(model_dir: Path) -> dict[str, Path]:
    """{name: folder} of the peft adapters under the checkpoint's `adapters/`."""
    return {
        cfg.parent.name: cfg.parent for cfg in sorted((model_dir / "adapters").glob("*/adapter_config.json"))
    }


class TransformersEngine(DecodingEngine):
    """AutoModelForCausalLM with a KV cache, decoding a batch one token at a time on the CPU."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, *, threads: int = 0, adapters: dict[str, Path] | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model_dir)
        self._torch = torch
        self.threads = threads or usable_cores()
        torch.set_num_threads(self.threads)
        folder = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False)
        config = self.model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = config.eos_token_id if config.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.bos_token_id = self.tokenizer.bos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else min(self.eos_token_ids, default=0)
        found = {**find_adapters(folder), **(adapters or {})}
        if found:
            self.model = _with_adapters(self.model, found)
        self.adapters = sorted(found)
        self.model.eval()
        from slmops.core.vocab import token_bytes

        added = {i: t.content for i, t in self.tokenizer.added_tokens_decoder.items()}
        try:
            self._bytes = token_bytes(self.tokenizer.get_vocab(), added)[1]
        except ValueError:  # neither byte-level nor SentencePiece: fall back to decoded text
            self._bytes = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def new_decoder(self) -> Callable[[int], str]:
        ids: list[int] = []
        done = [""]  # text already handed out

        def decode(token: int) -> str:
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
                return ""
            piece = text.removeprefix(done[0])
            done[0] = text
            return piece

        return decode

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _cohort(self, prompts: list[list[int]], sampling: Sampling, max_new: int) -> _HfCohort:
        return _HfCohort(self, prompts, sampling, max_new)

    def adapter_context(self, adapter: str | None):
        """A context in which the model runs as the base (None) or with one adapter."""
        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def apply_chat_template(self, messages: list[dict]) -> str:
        clean = chat_template.check_messages(messages)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
        return chat_template.fallback_prompt(clean)


def _with_adapters(model, found: dict[str, Path]):
    """The base model wrapped by peft with every adapter loaded under its name."""
    from peft import PeftModel

    names = list(found)
    for name, path in found.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise InvalidSpec("adapters", f"{name}: {str(path)!r} is not a peft adapter folder")
        base = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
        if base.get("peft_type") not in (None, "LORA"):
            raise InvalidSpec("adapters", f"{name}: only LoRA adapters are served")
    wrapped = PeftModel.from_pretrained(model, str(found[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        wrapped.load_adapter(str(found[name]), adapter_name=name)
    return wrapped


class _HfCohort:
    """A left-padded batch with its attention mask, positions and KV cache."""

    def __init__(
        self, engine: TransformersEngine, prompts: list[list[int]], sampling: Sampling, max_new: int
    ):
        torch = engine._torch
        self.engine, self.sampling = engine, sampling
        self.rows = len(prompts)
        width = max(len(p) for p in prompts)
        self.max_steps = min(max_new, engine.context_length - width)
        ids = torch.full((self.rows, width), engine.pad_token_id, dtype=torch.long)
        mask = torch.zeros((self.rows, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        self.inputs, self.mask = ids, mask
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = None
        seed = torch.seed() if sampling.seed is None else sampling.seed & 0x7FFFFFFF
        self.rng = torch.Generator().manual_seed(seed)

    def step(self, want_logits: bool) -> tuple[list[int], np.ndarray | None]:
        torch = self.engine._torch
        with torch.inference_mode(), self.engine.adapter_context(self.sampling.adapter):
            out = self.engine.model(
                input_ids=self.inputs,
                attention_mask=self.mask,
                position_ids=self.positions,
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.cache = out.cache
        logits = out.logits[:, -1].float()
        tokens = _pick(logits, self.sampling, self.rng)
        self.inputs = torch.tensor([[t] for t in tokens], dtype=torch.long)
        self.mask = torch.cat([self.mask, torch.ones((self.rows, 1), dtype=torch.long)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return tokens, logits.numpy() if want_logits else None

    def close(self) -> None:
        self.cache = None


def _pick(logits, sampling: Sampling, rng) -> list[int]:
    """Greedy when temperature is 0, else temperature + nucleus (top_p) sampling, per row."""
    import torch

    if sampling.greedy:
        return [int(t) for t in torch.argmax(logits, dim=-1)]
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
        keep[:, 0] = True
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return [int(t) for t in torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=rng)[:, 0]]
