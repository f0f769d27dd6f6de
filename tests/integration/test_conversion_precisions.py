"""Every CPU precision of the conversion, on tiny Qwen2 (tied) and Llama (untied) models, verified.

Olive and ORT GenAI run for real: the workflow builds the model, the folder
is loaded by ORT GenAI and compared with the PyTorch source by `verify`.
"""

from __future__ import annotations

import json

import onnx
import pytest

from slmops.conversion import job
from slmops.conversion.config import ConversionConfig
from slmops.conversion.olive_convert import OLIVE_CONFIG, ConversionError, convert, int4_candidates
from slmops.conversion.verify import thresholds_for, verify
from slmops.core import artifacts
from slmops.core.progress import null_progress
from tests.integration._models import tiny_checkpoint, tiny_llama_checkpoint

pytestmark = pytest.mark.integration

CHECKPOINTS = {"qwen2": tiny_checkpoint, "llama": tiny_llama_checkpoint}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{(architecture, precision): (source, folder, result)} for every CPU precision, as the job converts:
    int4 tries its layouts from the smallest until one passes verification."""
    out = {}
    for arch, build in CHECKPOINTS.items():
        source = build(tmp_path_factory)
        for precision in ("fp32", "int8", "int4"):
            folder = tmp_path_factory.mktemp(f"{arch}-{precision}") / "model"
            cfg = ConversionConfig(model_uri=artifacts.to_uri(source), precision=precision)
            result = job._smallest_verified(cfg, source, folder, {}, null_progress)
            out[arch, precision] = (source, folder, result)
    return out


@pytest.mark.parametrize("arch", sorted(CHECKPOINTS))
@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_each_precision_answers_like_its_source(converted, arch, precision):
    source, folder, result = converted[arch, precision]
    assert result["verification"]["passed"]
    assert result["last_logits"]  # the LM head runs on each row's last real token only
    again = verify(source, folder, None, thresholds_for(precision), new_tokens=8, threads=2)
    assert again.passed, again.reasons  # the folder left behind is the one that passed
    if precision == "fp32":
        assert again.token_agreement == 1.0 and again.logits_rel_error < 1e-4
    if precision != "int4":
        assert result["attempts"] == []


def test_int4_keeps_the_smallest_layout_that_passes_and_records_the_misses(converted):
    for arch in CHECKPOINTS:
        source, _, result = converted[arch, "int4"]
        candidates = int4_candidates(json.loads((source / "config.json").read_text()))
        tried = [a["options"] for a in result["attempts"]] + [result["options"]]
        assert tried == candidates[: len(tried)]  # in order, from the smallest
        for attempt in result["attempts"]:
            assert attempt["reasons"]


@pytest.mark.parametrize("arch", sorted(CHECKPOINTS))
def test_smaller_precisions_are_smaller_and_int4_quantizes_the_embedding(converted, arch):
    sizes = {p: converted[arch, p][2]["size_bytes"] for p in ("fp32", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]
    folder = converted[arch, "int4"][1]
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    assert "GatherBlockQuantized" in ops  # the embedding lookup reads int4 blocks
    assert "model.embed_tokens.weight" not in floats
    options = converted[arch, "int4"][2]["options"]
    assert options["int4_block_size"] in ("64", "32", "16")
    int8 = onnx.load(str(converted[arch, "int8"][1] / "model.onnx"), load_external_data=False).graph
    assert "GatherBlockQuantized" in {node.op_type for node in int8.node}  # int8's embedding is 8-bit too
    if arch == "qwen2":  # tied: one quantized matrix serves the lookup and the LM head
        assert options["shared_embeddings"] == "true"
        assert "lm_head.MatMul.weight_Q4" not in {init.name for init in graph.initializer}
    else:  # untied: never shared, each quantized on its own
        assert "shared_embeddings" not in options and options["int4_op_types_to_quantize"] == "MatMul/Gather"


def test_the_olive_config_that_ran_is_saved_with_the_model(converted):
    source, folder, result = converted["qwen2", "int8"]
    saved = json.loads((folder / OLIVE_CONFIG).read_text())
    assert saved["input_model"] == {"type": "HfModel", "model_path": str(source)}
    assert list(saved["passes"]) == ["builder", "quantize_int8"]
    assert saved["passes"]["builder"]["precision"] == "fp32"
    assert saved["passes"]["quantize_int8"]["bits"] == 8
    assert saved["passes"]["builder"]["extra_options"]["hf_remote"] is False
    assert (saved["cache_dir"], saved["output_dir"]) == ("olive-cache", "olive-output")
    assert OLIVE_CONFIG in result["files"]
    # Olive's 8-bit pass renames the logits output; genai_config follows it.
    genai = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["outputs"]
    outputs = [o.name for o in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.output]
    assert genai["logits"] in outputs


def test_spec_options_win_over_the_defaults(tmp_path_factory, tmp_path):
    options = {"int4_is_symmetric": "true", "int4_block_size": "32"}
    result = convert(tiny_checkpoint(tmp_path_factory), tmp_path / "out", "int4", "cpu", options)
    assert result["options"]["int4_is_symmetric"] == "true"
    assert result["options"]["int4_block_size"] == "32"
    saved = json.loads((tmp_path / "out" / OLIVE_CONFIG).read_text())
    assert saved["passes"]["builder"]["extra_options"]["int4_is_symmetric"] is True


def test_a_truncated_checkpoint_is_named_before_olive_runs(tmp_path_factory, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint(tmp_path_factory), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"model.safetensors is truncated: \d+ bytes of the \d+"):
        convert(broken, tmp_path / "out", "int4", "cpu")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".olive-")]
