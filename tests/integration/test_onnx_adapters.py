"""LoRA adapters as `.onnx_adapter` files that ORT GenAI loads beside one base model.

Built from the tiny checkpoint and two random peft adapters (alpha adapts all
seven projections at rank 4, beta three of them at rank 8); checked with
`onnxruntime_genai` directly, and against transformers + peft in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.conversion.onnx_adapters import AdapterBuildError
from tests.integration._models import (
    build_onnx_with_adapters,
    tiny_adapters,
    tiny_checkpoint,
    tiny_onnx_with_adapters,
)

pytestmark = pytest.mark.integration

PROMPT = "question: what is 2 + 3?"
NEW_TOKENS = 12
MODELS = (None, "alpha", "beta")  # None: the base model, no adapter active


def _og_greedy(folder: Path, prompt: str = PROMPT) -> tuple[list[int], dict[str | None, list[int]]]:
    """The prompt's token ids and greedy continuations for the base model and each adapter."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    adapters = og.Adapters(model)
    for name in MODELS[1:]:
        adapters.load(str(folder / "adapters" / f"{name}.onnx_adapter"), name)
    ids = [int(t) for t in og.Tokenizer(model).encode(prompt)]
    out: dict[str | None, list[int]] = {}
    for name in MODELS:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
        generator = og.Generator(model, params)
        if name is not None:  # before append_tokens, or the prompt runs without the adapter
            generator.set_active_adapter(adapters, name)
        generator.append_tokens(np.array([ids], dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        out[name] = [int(t) for t in generator.get_sequence(0)][len(ids) :]
        del generator
    return ids, out


def _peft_greedy(checkpoint: Path, adapter: Path | None, ids: list[int]) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    prompt = torch.tensor([ids])
    with torch.no_grad():
        tokens = model.eval().generate(prompt, attention_mask=torch.ones_like(prompt),
                                       max_new_tokens=NEW_TOKENS, do_sample=False)  # fmt: skip
    return tokens[0, len(ids) :].tolist()


def test_fp32_adapters_change_the_output_as_peft_does(tmp_path_factory):
    folder = tiny_onnx_with_adapters(tmp_path_factory, "fp32")
    files = sorted(p.name for p in (folder / "adapters").iterdir())
    assert files == ["alpha.onnx_adapter", "beta.onnx_adapter"]

    ids, out = _og_greedy(folder)

    assert len({tuple(tokens) for tokens in out.values()}) == 3, out
    checkpoint, adapters = tiny_checkpoint(tmp_path_factory), tiny_adapters(tmp_path_factory)
    for name in MODELS:
        expected = _peft_greedy(checkpoint, adapters[name] if name else None, ids)
        assert out[name] == expected, name


def test_int4_keeps_lora_float_and_adapters_still_differ(tmp_path_factory):
    import onnx

    folder = tiny_onnx_with_adapters(tmp_path_factory, "int4")
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {(node.op_type, "/lora_" in node.name) for node in graph.node}
    assert ("MatMulNBits", False) in ops and ("MatMul", True) in ops
    assert ("MatMulNBits", True) not in ops

    _, out = _og_greedy(folder)

    assert len({tuple(tokens) for tokens in out.values()}) == 3, out


def test_generators_with_different_adapters_step_in_turn(tmp_path_factory):
    import onnxruntime_genai as og

    folder = tiny_onnx_with_adapters(tmp_path_factory, "fp32")
    ids, alone = _og_greedy(folder)
    model = og.Model(str(folder))
    adapters = og.Adapters(model)
    generators = {}
    for name in MODELS:
        if name is not None:
            adapters.load(str(folder / "adapters" / f"{name}.onnx_adapter"), name)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
        generators[name] = og.Generator(model, params)
        if name is not None:
            generators[name].set_active_adapter(adapters, name)
        generators[name].append_tokens(np.array([ids], dtype=np.int32))

    for _ in range(NEW_TOKENS):
        for generator in generators.values():
            if not generator.is_done():
                generator.generate_next_token()

    for name, generator in generators.items():
        assert [int(t) for t in generator.get_sequence(0)][len(ids) :] == alone[name], name


def test_a_batch_of_two_runs_one_adapter_on_both_rows(tmp_path_factory):
    import onnxruntime_genai as og

    folder = tiny_onnx_with_adapters(tmp_path_factory, "fp32")
    ids, alone = _og_greedy(folder)
    model = og.Model(str(folder))
    adapters = og.Adapters(model)
    adapters.load(str(folder / "adapters" / "beta.onnx_adapter"), "beta")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False, batch_size=2)
    generator = og.Generator(model, params)
    generator.set_active_adapter(adapters, "beta")
    generator.append_tokens(np.array([ids, ids], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()

    for row in range(2):
        assert [int(t) for t in generator.get_sequence(row)][len(ids) :] == alone["beta"], row


def test_an_adapter_with_modules_the_first_lacks_is_refused_before_building(tmp_path_factory, tmp_path):
    adapters = tiny_adapters(tmp_path_factory)
    # "aaa" sorts first, so beta's modules shape the graph and alpha's extra ones have nowhere to go.
    with pytest.raises(AdapterBuildError, match="adapts modules"):
        build_onnx_with_adapters(tiny_checkpoint(tmp_path_factory),
                                 {"aaa": adapters["beta"], "alpha": adapters["alpha"]}, tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out").exists()
