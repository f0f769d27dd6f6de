"""The two sides `verify` compares: the source in transformers (fp32, optionally with a peft
adapter) and the converted folder in ORT GenAI (optionally with one `.onnx_adapter`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmops.core.errors import InvalidSpec


class TorchSide:
    """The source checkpoint (optionally with a peft adapter) in transformers, fp32."""

    def __init__(self, source_dir: Path, adapter: Path | None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(source_dir), trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(source_dir), trust_remote_code=False, dtype=torch.float32
        )
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.eval()
        config = model.config
        eos = model.generation_config.eos_token_id
        eos = config.eos_token_id if eos is None else eos
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)

    def encode(self, prompt: str) -> list[int]:
        ids = list(self.tokenizer.encode(prompt))
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        return ids

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        """Greedy continuation with a KV cache, EOS included when reached."""
        torch = self.torch
        out: list[int] = []
        inputs, cache = torch.tensor([ids]), None
        with torch.inference_mode():
            while len(out) < new_tokens:
                result = self.model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1)
                cache = result.cache
                token = int(result.logits[0, -1].argmax())
                out.append(token)
                if token in self.eos:
                    break
                inputs = torch.tensor([[token]])
        return out

    def logits(self, sequence: list[int]) -> np.ndarray:
        """[positions, vocab] float32 logits of one forward pass."""
        torch = self.torch
        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([sequence])).logits[0].float().numpy()


class OnnxSide:
    """The converted folder in ORT GenAI, with intra-op threads and optionally one adapter."""

    def __init__(self, onnx_dir: Path, threads: int, adapter: str | None):
        import onnxruntime_genai as og

        from slmops.core.model_files import find_adapters

        self.og = og
        config = og.Config(str(onnx_dir))
        overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        config.overlay(json.dumps(overlay))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.adapter, self.adapters = adapter, None
        if adapter is not None:
            found = find_adapters(onnx_dir)
            if adapter not in found:
                known = ", ".join(found) or "none"
                raise InvalidSpec("adapter", f"{onnx_dir} has no adapter {adapter!r} (found: {known})")
            self.adapters = og.Adapters(self.model)
            self.adapters.load(str(found[adapter]), adapter)

    def encode(self, prompt: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(prompt)]

    def _generator(self, max_length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=max_length, do_sample=False, num_beams=1, repetition_penalty=1.0, min_length=0
        )
        generator = self.og.Generator(self.model, params)
        if self.adapters is not None:  # before append_tokens, or the prompt runs on the base
            generator.set_active_adapter(self.adapters, self.adapter)
        return generator

    def greedy(self, ids: list[int], new_tokens: int, eos: set[int]) -> list[int]:
        """Greedy continuation as served: the prompt at once, then one token a step."""
        generator = self._generator(len(ids) + new_tokens)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        out: list[int] = []
        while len(out) < new_tokens and not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            out.append(token)
            if token in eos:
                break
        return out

    def logits(self, sequence: list[int]) -> np.ndarray:
        """[positions, vocab] float32 logits, one token appended per step."""
        generator = self._generator(len(sequence) + 1)
        rows = []
        for token in sequence:
            generator.append_tokens(np.asarray([[token]], dtype=np.int32))
            rows.append(np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1))
        return np.stack(rows)

    def close(self) -> None:
        # og objects must be released before the interpreter exits, or ORT GenAI reports leaks.
        for attr in ("adapters", "tokenizer", "model"):
            self.__dict__.pop(attr, None)
