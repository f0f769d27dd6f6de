"""The LM head on each row's last real token: same tokens and logits as the full graph, in ORT GenAI.

The tiny Qwen2 model is built by the ORT GenAI model builder (int4 and fp32),
copied, and rewritten with `keep_last_logits`; both folders then run the same
prompts in ORT GenAI as the predictor batches them (prompts of different
lengths right-padded with the pad token in one `og.Generator`) and one at a
time. A hand-made graph run in ONNX Runtime checks the index each row gets
with a past (a decode step, a later chunk) and an int32 attention mask.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.conversion.last_logits import PREFIX, keep_last_logits, keep_last_logits_in, prefill_graph_name
from tests.integration._models import tiny_onnx

STEPS = 6


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _external_refs(model_onnx: Path) -> dict[str, list[tuple[str, str]]]:
    import onnx

    graph = onnx.load(str(model_onnx), load_external_data=False).graph
    return {t.name: [(e.key, e.value) for e in t.external_data] for t in graph.initializer if t.external_data}


def _run(folder: Path, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Greedy tokens [steps, rows], the logits they were chosen from [steps, rows, vocab], the
    prefill's logits output shape: prompts right-padded in one generator, as the predictor runs them."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    pad = json.loads((folder / "genai_config.json").read_text())["model"]["pad_token_id"]
    width = max(len(p) for p in prompts)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=width + STEPS, batch_size=len(prompts), do_sample=False)
    generator = og.Generator(model, params)
    padded = np.full((len(prompts), width), pad, dtype=np.int32)
    for row, ids in enumerate(prompts):
        padded[row, : len(ids)] = ids
    generator.append_tokens(padded)
    shape = tuple(np.asarray(generator.get_output("logits")).shape)
    tokens, logits = [], []
    for _ in range(STEPS):
        logits.append(np.asarray(generator.get_logits(), dtype=np.float32).reshape(len(prompts), -1))
        generator.generate_next_token()
        tokens.append([int(t) for t in generator.get_next_tokens()])
    del generator, params, model
    return np.asarray(tokens), np.stack(logits), shape


def _prompts(folder: Path, lengths: list[int]) -> list[list[int]]:
    """Prompts of the given lengths without special tokens (ids above the pad and eos)."""
    model = json.loads((folder / "genai_config.json").read_text())["model"]
    low = 1 + max(model["pad_token_id"], *np.atleast_1d(model["eos_token_id"]), model["bos_token_id"])
    rng = np.random.default_rng(sum(lengths))
    return [[int(t) for t in rng.integers(low, low + 200, n)] for n in lengths]


PREFILL = prefill_graph_name("model.onnx")


@pytest.fixture(scope="module", params=["int4", "fp32"])
def folders(request, tmp_path_factory) -> tuple[Path, Path]:
    """(the builder's folder, a copy whose graph is the one keep_last_logits_in wrote beside it)."""
    built = tiny_onnx(tmp_path_factory, request.param)
    rewritten = tmp_path_factory.mktemp(f"last-logits-{request.param}") / "model"
    shutil.copytree(built, rewritten)
    weights, graph = _digest(rewritten / "model.onnx.data"), _digest(rewritten / "model.onnx")
    refs = _external_refs(rewritten / "model.onnx")
    assert keep_last_logits_in(rewritten) is True
    assert _digest(rewritten / "model.onnx") == graph  # the builder's graph stays for other consumers
    assert _digest(rewritten / "model.onnx.data") == weights
    assert _external_refs(rewritten / PREFILL) == refs  # the same bytes of the same file
    shutil.copy(rewritten / PREFILL, rewritten / "model.onnx")
    return built, rewritten


def test_the_predictor_runs_the_prefill_graph_when_the_folder_has_it(folders, tmp_path):
    from slmops.predictor.loading import load_engine

    built, _ = folders
    beside = tmp_path / "model"
    shutil.copytree(built, beside)
    assert keep_last_logits_in(beside) is True
    plain, pruned = load_engine(built), load_engine(beside)
    try:
        assert (plain.prefill_graph, pruned.prefill_graph) == (False, True)
        prompt = "question: what is 2 + 3? answer:"
        expected = plain.generate(prompt, max_tokens=8, logprobs=3)
        got = pruned.generate(prompt, max_tokens=8, logprobs=3)
        assert got.text == expected.text
        for a, b in zip(got.logprobs, expected.logprobs, strict=True):
            assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
    finally:
        plain.close()
        pruned.close()


@pytest.mark.parametrize("lengths", [[5, 2, 9, 1], [7]], ids=["right-padded batch", "batch 1"])
def test_same_greedy_tokens_and_logits_as_the_full_graph(folders, lengths):
    built, rewritten = folders
    prompts = _prompts(built, lengths)
    full_tokens, full_logits, full_shape = _run(built, prompts)
    tokens, logits, shape = _run(rewritten, prompts)
    assert full_shape[1] == max(lengths) and shape == (len(lengths), 1, full_shape[2])
    np.testing.assert_array_equal(tokens, full_tokens)
    scale = float(np.abs(full_logits).max())
    np.testing.assert_allclose(logits, full_logits, rtol=1e-4, atol=1e-4 * scale)


def test_perplexity_of_the_rewritten_model_is_the_full_graphs(folders):
    from slmops.evaluation.perplexity import perplexity_onnx

    built, rewritten = folders
    pairs = [("question: what is 2 + 3? answer:", " 5"), ("hello", " world, this is a tiny model")]
    assert perplexity_onnx(rewritten, pairs) == pytest.approx(perplexity_onnx(built, pairs), rel=1e-4)


def test_a_second_rewrite_changes_nothing(folders):
    _, rewritten = folders
    before = _digest(rewritten / "model.onnx")
    assert keep_last_logits(rewritten / "model.onnx") is False
    assert _digest(rewritten / "model.onnx") == before


def _toy_graph(mask_type: int = 7, *, head: str = "MatMul", mask: bool = True, output: str = "logits"):
    """input_ids -> embedding (Gather) -> [B, S, 4] -> head with [4, 6] -> output [B, S, 6]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    embedding = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "embedding")
    weight = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "weight")
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["hidden"])]
    if head == "MatMul":
        nodes += [helper.make_node("MatMul", ["hidden", "weight"], ["head_out"])]
    else:
        nodes += [helper.make_node("Concat", ["hidden", "hidden"], ["wide"], axis=2)]
        nodes += [helper.make_node("Slice", ["wide", "starts", "ends", "axes"], ["head_out"])]
    nodes += [helper.make_node("Cast", ["head_out"], [output], to=TensorProto.FLOAT)]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    if mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", mask_type, ["batch", "total"]))
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence", 6])]
    slices = [numpy_helper.from_array(np.asarray(v, dtype=np.int64), k)
              for k, v in {"starts": [0], "ends": [6], "axes": [2]}.items()]  # fmt: skip
    graph = helper.make_graph(nodes, "toy", inputs, outputs, [embedding, weight, *slices])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("mask_type", [7, 6], ids=["int64 mask", "int32 mask"])
def test_each_row_gets_its_last_real_token_of_the_chunk(tmp_path, mask_type):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "model.onnx"
    onnx.save(_toy_graph(mask_type), str(path))
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert keep_last_logits(path) is True
    saved = onnx.load(str(path))
    assert [d.dim_value for d in saved.graph.output[0].type.tensor_type.shape.dim][1:] == [1, 6]
    assert any(node.name.startswith(PREFIX) for node in saved.graph.node)
    last = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.int64 if mask_type == 7 else np.int32
    ids = np.asarray([[3, 4, 5, 1], [6, 7, 1, 1], [2, 1, 1, 1]], dtype=np.int64)
    cases = {  # mask -> the position each row's logits come from
        "prefill, right-padded": ([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], [3, 1, 0]),
        "a chunk after 2 tokens": ([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], [3, 1, 2]),
        "a decode step": ([[1, 1, 1, 1, 1, 1, 0, 0, 1]] * 3, [0, 0, 0]),
    }
    for what, (mask, picks) in cases.items():
        width = 1 if what == "a decode step" else ids.shape[1]
        feeds = {"input_ids": ids[:, :width], "attention_mask": np.asarray(mask, dtype=dtype)}
        reference = full.run(None, feeds)[0]
        got = last.run(None, feeds)[0]
        assert got.shape == (3, 1, 6), what
        np.testing.assert_allclose(got[:, 0], reference[np.arange(3), picks], rtol=1e-6, err_msg=what)


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param({"mask": False}, id="no attention_mask input"),
        pytest.param({"head": "Slice"}, id="no MatMul head"),
        pytest.param({"output": "scores"}, id="no logits output"),
    ],
)
def test_a_graph_without_the_pattern_is_left_alone(tmp_path, graph):
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(_toy_graph(**graph), str(path))
    before = _digest(path)
    assert keep_last_logits(path) is False
    assert _digest(path) == before
