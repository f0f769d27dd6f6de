"""ONNX Runtime GenAI engine: serves a folder made by the conversion stage.

A cohort is one `og.Generator` with a batch of sequences: prompts of different
lengths are padded on the right with the model's pad token (ORT GenAI masks
them). Its intra-op threads are set when the model loads: as built, a model
runs on one thread, about half the speed two cores give (FACTS.md). LoRA
adapters are `.onnx_adapter` files, in the folder's `adapters/` (or at its
root) or named on the command line; each generator activates its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slmops.core import chat_template
from slmops.core.errors import InvalidSpec
from slmops.core.model_files import find_adapters, prefill_graph_name, usable_cores
from slmops.core.vocab import table_from_tokenizer_json
from slmops.predictor.engines import DecodingEngine, Sampling


class OrtGenaiEngine(DecodingEngine):
    """og.Model + og.Tokenizer; one og.Generator per cohort, greedy unless temperature > 0."""

    name = "ort-genai"

    def __init__(self, model_dir: str | Path, *, threads: int = 0, adapters: dict[str, Path] | None = None):
        import onnxruntime_genai as og

        super().__init__(model_dir)
        self._og = og
        folder = Path(model_dir)
        config_path = folder / "genai_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config.get("model", {})
        missing = [k for k in ("eos_token_id", "context_length") if model_cfg.get(k) is None]
        if missing:
            raise InvalidSpec(
                "model_dir",
                f"{config_path} has no {', '.join(missing)}; set them in the checkpoint's "
                "config.json and convert again",
            )
        og_config = og.Config(str(folder))
        graph = model_cfg.get("decoder", {}).get("filename", "model.onnx")
        self.prefill_graph = (folder / prefill_graph_name(graph)).is_file()
        if self.prefill_graph:  # the LM head on each row's last token only (conversion/last_logits.py)
            og_config.overlay(json.dumps({"model": {"decoder": {"filename": prefill_graph_name(graph)}}}))
        session = model_cfg.get("decoder", {}).get("session_options", {})
        if threads or "intra_op_num_threads" not in session:
            self.threads = threads or usable_cores()
            overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}
            og_config.overlay(json.dumps(overlay))
        else:
            self.threads = int(session["intra_op_num_threads"])
        self.model = og.Model(og_config)
        self.tokenizer = og.Tokenizer(self.model)
        self.context_length = int(model_cfg["context_length"])
        self.vocab_size = int(model_cfg.get("vocab_size") or 0)
        eos = model_cfg["eos_token_id"]
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos])
        bos = model_cfg.get("bos_token_id")
        self.bos_token_id = int(bos) if isinstance(bos, int) else None
        pad = model_cfg.get("pad_token_id")
        self.pad_token_id = int(pad) if isinstance(pad, int) else min(self.eos_token_ids)
        self._template, self._tokenizer_config = chat_template.read_template(folder)
        tokenizer_json = folder / "tokenizer.json"
        self._bytes = table_from_tokenizer_json(str(tokenizer_json)) if tokenizer_json.is_file() else {}
        found = {**find_adapters(folder), **(adapters or {})}
        self._adapters = og.Adapters(self.model) if found else None
        for adapter_name, path in found.items():
            if not Path(path).is_file():
                raise InvalidSpec("adapters", f"{adapter_name}: {str(path)!r} is not a file")
            self._adapters.load(str(path), adapter_name)
        self.adapters = sorted(found)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def new_decoder(self) -> Callable[[int], str]:
        return self.tokenizer.create_stream().decode

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode(np.asarray([token_id], dtype=np.int32))

    def _cohort(self, prompts: list[list[int]], sampling: Sampling, max_new: int) -> _OrtCohort:
        return _OrtCohort(self, prompts, sampling, max_new)

    def close(self) -> None:
        with self._lock:
            # og objects must be released before the interpreter exits, or ORT GenAI reports leaks.
            for attr in ("_adapters", "tokenizer", "model"):
                self.__dict__.pop(attr, None)

    def apply_chat_template(self, messages: list[dict]) -> str:
        clean = chat_template.check_messages(messages)
        if self._template:
            return chat_template.render(self._template, clean, self._tokenizer_config)
        return chat_template.fallback_prompt(clean)


class _OrtCohort:
    """One og.Generator over a batch of prompts."""

    def __init__(self, engine: OrtGenaiEngine, prompts: list[list[int]], sampling: Sampling, max_new: int):
        og = engine._og
        self.rows = len(prompts)
        width = max(len(p) for p in prompts)
        params = og.GeneratorParams(engine.model)
        options: dict[str, object] = {
            "max_length": min(width + max_new, engine.context_length),
            "batch_size": self.rows,
            "do_sample": False,
        }
        if not sampling.greedy:
            options.update(
                do_sample=True,
                temperature=float(sampling.temperature),
                top_p=float(sampling.top_p),
                top_k=engine.vocab_size or 1 << 20,  # no top-k cut: OpenAI semantics
                random_seed=-1 if sampling.seed is None else int(sampling.seed) & 0x7FFFFFFF,
            )
        params.set_search_options(**options)
        self.max_steps = int(options["max_length"]) - width
        self.generator = og.Generator(engine.model, params)
        if sampling.adapter is not None:
            self.generator.set_active_adapter(engine._adapters, sampling.adapter)
        padded = np.full((self.rows, width), engine.pad_token_id, dtype=np.int32)
        for row, ids in enumerate(prompts):
            padded[row, : len(ids)] = ids
        self.generator.append_tokens(padded)

    def step(self, want_logits: bool) -> tuple[list[int], np.ndarray | None]:
        """The next token of each row, and the logits it was chosen from when asked.

        `get_logits` returns the logits `generate_next_token` picks from next
        (rows x 1 x vocab, a copy): after `append_tokens`, the prompt's (each
        row's last real token); after a step, those of a pass over the token
        just chosen, which it then runs instead of the next
        `generate_next_token` (no extra work). So they are read before
        `generate_next_token`; read after it, they are the next position's.
        """
        logits = None
        if want_logits:
            logits = np.asarray(self.generator.get_logits(), dtype=np.float32).reshape(self.rows, -1)
        self.generator.generate_next_token()
        tokens = [int(t) for t in self.generator.get_next_tokens()]
        return tokens, logits

    def close(self) -> None:
        self.__dict__.pop("generator", None)
