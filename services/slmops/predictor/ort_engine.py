"""ONNX Runtime GenAI engine: serves a folder made by the conversion stage."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from slmops.core.errors import InvalidSpec
from slmops.predictor import chat_template
from slmops.predictor.engines import DecodingEngine


class OrtGenaiEngine(DecodingEngine):
    """og.Model + og.Tokenizer; one og.Generator per request, greedy unless temperature > 0."""

    name = "ort-genai"

    def __init__(self, model_dir: str | Path):
        import onnxruntime_genai as og

        super().__init__(model_dir)
        self._og = og
        config_path = Path(model_dir) / "genai_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config.get("model", {})
        missing = [k for k in ("eos_token_id", "context_length") if model_cfg.get(k) is None]
        if missing:
            raise InvalidSpec(
                "model_dir",
                f"{config_path} has no {', '.join(missing)}; set them in the checkpoint's "
                "config.json and convert again",
            )
        self.model = og.Model(str(model_dir))
        self.tokenizer = og.Tokenizer(self.model)
        self.context_length = int(model_cfg["context_length"])
        self.vocab_size = int(model_cfg.get("vocab_size") or 0)
        eos = model_cfg["eos_token_id"]
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos])
        bos = model_cfg.get("bos_token_id")
        self.bos_token_id = int(bos) if isinstance(bos, int) else None
        self._template, self._tokenizer_config = chat_template.read_template(model_dir)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _new_decoder(self) -> Callable[[int], str]:
        return self.tokenizer.create_stream().decode

    def _tokens(
        self, prompt_ids: list[int], limit: int, temperature: float, top_p: float, seed: int | None
    ) -> Iterator[int]:
        import numpy as np

        og = self._og
        params = og.GeneratorParams(self.model)
        options: dict[str, object] = {"max_length": len(prompt_ids) + limit, "do_sample": False}
        if temperature > 0:
            options.update(
                do_sample=True,
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=self.vocab_size or 1 << 20,  # no top-k cut: OpenAI semantics
                random_seed=-1 if seed is None else int(seed) & 0x7FFFFFFF,
            )
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        try:
            generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
            for _ in range(limit):
                if generator.is_done():
                    return
                generator.generate_next_token()
                yield int(generator.get_next_tokens()[0])
        finally:
            del generator

    def close(self) -> None:
        with self._lock:
            # og objects must be released before the interpreter exits, or ORT GenAI reports leaks.
            self.__dict__.pop("tokenizer", None)
            self.__dict__.pop("model", None)

    def apply_chat_template(self, messages: list[dict]) -> str:
        clean = chat_template.check_messages(messages)
        if self._template:
            return chat_template.render(self._template, clean, self._tokenizer_config)
        return chat_template.fallback_prompt(clean)
