"""transformers engine: serves a Hugging Face checkpoint folder (no trust_remote_code)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from slmops.predictor import chat_template
from slmops.predictor.engines import DecodingEngine


class TransformersEngine(DecodingEngine):
    """AutoModelForCausalLM with a KV cache, decoding one token at a time on the CPU."""

    name = "transformers"

    def __init__(self, model_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model_dir)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False)
        self.model.eval()
        config = self.model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = (
                config.eos_token_id
                if config.eos_token_id is not None
                else self.tokenizer.eos_token_id
            )
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.bos_token_id = self.tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _new_decoder(self) -> Callable[[int], str]:
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

    def _tokens(
        self, prompt_ids: list[int], limit: int, temperature: float, top_p: float, seed: int | None
    ) -> Iterator[int]:
        torch = self._torch
        rng = torch.Generator().manual_seed(torch.seed() if seed is None else seed & 0x7FFFFFFF)
        inputs = torch.tensor([prompt_ids], dtype=torch.long)
        cache = None
        with torch.inference_mode():
            for _ in range(limit):
                out = self.model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1)
                cache = out.cache
                token = _pick(out.logits[0, -1].float(), temperature, top_p, rng)
                yield token
                inputs = torch.tensor([[token]], dtype=torch.long)

    def apply_chat_template(self, messages: list[dict]) -> str:
        clean = chat_template.check_messages(messages)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                clean, tokenize=False, add_generation_prompt=True
            )
        return chat_template.fallback_prompt(clean)


def _pick(logits, temperature: float, top_p: float, rng) -> int:
    """Greedy when temperature is 0, else temperature + nucleus (top_p) sampling."""
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=rng))
