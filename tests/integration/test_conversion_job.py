"""The conversion job for real: Olive's ModelBuilder pass on a Ray task, then ORT GenAI generates."""

from __future__ import annotations

import json
import shutil

import pytest

from slmops.api.v1 import conversion_pb2
from slmops.conversion import job
from slmops.conversion.olive_convert import ConversionError, convert
from slmops.conversion.spec import from_proto
from slmops.core import artifacts
from slmops.predictor.loading import load_engine
from slmops.testing.tiny import count_parameters
from tests.integration._models import tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoint_artifact(tmp_path_factory):
    """The tiny checkpoint sealed as a training artifact that records its parameter count."""
    folder = tmp_path_factory.mktemp("artifacts") / "checkpoint"
    shutil.copytree(tiny_checkpoint(tmp_path_factory), folder)
    artifacts.finalize(str(folder), "checkpoint", metrics={"parameters": count_parameters(folder)})
    return artifacts.to_uri(folder)


def test_conversion_job_writes_an_onnx_model_that_generates(
    ray_local, checkpoint_artifact, tmp_path, monkeypatch
):
    # The service only reads models under its allowed roots; here that is the test's temp tree.
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(artifacts.local_path(checkpoint_artifact).parent))
    config = from_proto(conversion_pb2.ConversionSpec(model_uri=checkpoint_artifact))
    events: list[tuple[float, str]] = []
    output_uri = artifacts.to_uri(tmp_path / "onnx")

    result = job.run(
        config.model_dump(mode="json"),
        output_uri,
        lambda fraction, message, **_: events.append((fraction, message)),
        trace_id="ab" * 16,
    )

    folder = tmp_path / "onnx"
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.onnx",
        "model.onnx.data",
        "genai_config.json",
        "tokenizer.json",
        "manifest.json",
    } <= names
    assert not names & {"footprint.json", "run_history.txt", "model_config.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".olive-")]
    manifest = artifacts.read_manifest(output_uri)
    assert manifest.kind == "onnx-model"
    assert manifest.parents == [checkpoint_artifact]
    assert manifest.trace_id == "ab" * 16
    assert manifest.spec["precision"] == "int4"
    assert manifest.extra["last_position_logits"] is True
    metrics = result["metrics"]
    assert result["output_uri"] == output_uri
    assert metrics["parameters"] == count_parameters(artifacts.local_path(checkpoint_artifact))
    assert 0 < metrics["size_bytes"] < metrics["source_size_bytes"]
    assert metrics["seconds"] > 0
    assert manifest.metrics == metrics
    assert events[0][0] == 0.0 and events[-1][0] == 1.0
    assert events[-1][1].startswith("conversion done; verified: token agreement")
    assert [f for f, _ in events] == sorted(f for f, _ in events)

    model = json.loads((folder / "genai_config.json").read_text())["model"]
    assert None not in (model["bos_token_id"], model["eos_token_id"], model["pad_token_id"])
    engine = load_engine(folder)
    answer = engine.generate("hello world", max_tokens=6)
    engine.close()
    assert (engine.name, answer.completion_tokens, answer.finish_reason) == (
        "ort-genai",
        6,
        "length",
    )


def test_olive_failures_surface_with_olives_reason(tmp_path_factory, tmp_path):
    """FP16 on the CPU provider: Olive skips the pass; convert says so instead of returning nothing."""
    with pytest.raises(ConversionError, match="Olive could not convert the model"):
        convert(tiny_checkpoint(tmp_path_factory), tmp_path / "out", "fp16", "cpu")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".olive-")]


def test_shared_embeddings_survive_olive(tmp_path_factory, tmp_path):
    """Olive 0.13 would store the tied embedding again in float; the shim keeps it shared in int4."""
    import onnx

    options = {"shared_embeddings": "true", "int4_algo_config": "rtn"}
    result = convert(tiny_checkpoint(tmp_path_factory), tmp_path / "out", "int4", "cpu", options)
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph
    assert "GatherBlockQuantized" in {node.op_type for node in graph.node}
    assert "model.embed_tokens.weight" not in {init.name for init in graph.initializer}
    engine = load_engine(result["output_dir"])
    assert engine.generate("hello world", max_tokens=4).completion_tokens == 4
    engine.close()


def test_every_conversion_is_verified_and_a_model_that_misses_fails_with_nothing_left(
    ray_local, checkpoint_artifact, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(artifacts.local_path(checkpoint_artifact).parent))
    config = from_proto(conversion_pb2.ConversionSpec(model_uri=checkpoint_artifact))
    messages: list[str] = []
    result = job.run(config.model_dump(mode="json"), artifacts.to_uri(tmp_path / "good"),
                     lambda fraction, message, **_: messages.append(message))  # fmt: skip
    verification = result["verification"]
    assert verification["passed"] and verification["prompt_source"] == "built-in prompts"
    assert verification["thresholds"]["max_kl"] == 5e-2  # int4's default
    assert result["metrics"]["verify_token_agreement"] == verification["token_agreement"]
    assert artifacts.read_manifest(result["output_uri"]).extra["verification"]["passed"]
    assert "verified: token agreement" in messages[-1]

    strict = conversion_pb2.VerificationSpec(max_kl=1e-30, new_tokens=4)  # no int4 model gets there
    config = from_proto(conversion_pb2.ConversionSpec(model_uri=checkpoint_artifact, verification=strict))
    assert config.verification.thresholds.max_kl == 1e-30
    assert config.verification.thresholds.min_token_agreement == 0.4  # the default stays
    with pytest.raises(
        ConversionError,
        match=r"failed verification \(the base model\): .*KL.*token_agreement=.*"
        r"after 5 int4 layouts, all missed",
    ):
        job.run(config.model_dump(mode="json"), artifacts.to_uri(tmp_path / "bad"), lambda *a, **k: None)
    assert not (tmp_path / "bad").exists()


def test_a_foundry_local_package_and_a_size_report_come_with_the_model(
    ray_local, checkpoint_artifact, tmp_path, monkeypatch
):
    from slmops.conversion.foundry import apply_prompt_template

    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(artifacts.local_path(checkpoint_artifact).parent))
    spec = conversion_pb2.ConversionSpec(model_uri=checkpoint_artifact, foundry_local_package=True)
    result = job.run(from_proto(spec).model_dump(mode="json"), artifacts.to_uri(tmp_path / "out"),
                     lambda *a, **k: None)  # fmt: skip
    manifest = artifacts.read_manifest(result["output_uri"])
    report = manifest.extra["size_report"]
    assert report["total_bytes"] == sum(report["files"].values()) == result["metrics"]["size_bytes"]
    assert 0 < report["ratio"] < 1
    package = tmp_path / "out" / manifest.extra["foundry_package"]
    model = json.loads((package / "inference_model.json").read_text())
    assert model["Name"] == "checkpoint"
    prompt = apply_prompt_template(model["PromptTemplate"], [{"role": "user", "content": "hi"}])
    assert "hi" in prompt
    assert (package / "model.onnx").is_file() and (package / "genai_config.json").is_file()
    assert load_engine(package).generate("hello world", max_tokens=3).completion_tokens == 3
