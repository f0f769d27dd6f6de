"""The conversion job with LoRA adapters, merged or swapped at run time, and with a broken checkpoint.

Ray, Olive, peft and ORT GenAI run for real on the tiny Qwen2 model and two
random adapters that adapt different modules at different ranks.
"""

from __future__ import annotations

import json
import shutil

import pytest

from slmops.api.v1 import conversion_pb2
from slmops.conversion import job
from slmops.conversion.olive_convert import ConversionError
from slmops.conversion.spec import from_proto
from slmops.core import artifacts
from slmops.predictor.loading import load_engine
from tests.integration._models import tiny_adapters, tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An artifact root with the base checkpoint and a multi-adapter artifact trained on it."""
    root = tmp_path_factory.mktemp("store")
    base = shutil.copytree(tiny_checkpoint(tmp_path_factory), root / "base")
    artifacts.finalize(str(base), "checkpoint")
    multi = root / "adapters-job"
    for name, folder in tiny_adapters(tmp_path_factory).items():
        shutil.copytree(folder, multi / "adapters" / name)
    (multi / "base_model.json").write_text(json.dumps({"base_model": artifacts.to_uri(base)}))
    artifacts.finalize(str(multi), "adapter")
    return root


def _run(spec: conversion_pb2.ConversionSpec, output, events=None):
    report = (lambda f, m, **_: events.append(m)) if events is not None else (lambda *a, **k: None)
    return job.run(from_proto(spec).model_dump(mode="json"), artifacts.to_uri(output), report)


def test_a_base_and_two_adapters_become_one_model_and_two_verified_adapter_files(
    ray_local, store, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(store))
    events: list[str] = []
    # FP32, so "matches peft" is near-exact: on random tiny weights the next-token distributions are
    # almost flat and int4's small logit errors flip greedy picks (its adapters: test_onnx_adapters.py).
    spec = conversion_pb2.ConversionSpec(model_uri=str(store / "base"), adapter_uris=[str(store / "adapters-job")],
                                         precision=conversion_pb2.FP32)  # fmt: skip
    result = _run(spec, tmp_path / "out", events)

    folder = tmp_path / "out"
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == [
        "alpha.onnx_adapter",
        "beta.onnx_adapter",
    ]
    verification = result["verification"]
    assert verification["passed"] and verification["adapter"] is None
    for name in ("alpha", "beta"):  # each against the base with the same peft adapter
        checked = verification["adapters"][name]
        assert checked["passed"] and checked["adapter"] == name
        assert checked["token_agreement"] == 1.0 and checked["logits_rel_error"] < 1e-4
    manifest = artifacts.read_manifest(result["output_uri"])
    assert manifest.extra["adapters"] == ["alpha", "beta"]
    assert manifest.extra["olive_config"] == "olive_config.json"
    saved = json.loads((folder / "olive_config.json").read_text())
    assert saved["input_model"]["adapter_path"] == "alpha"
    assert saved["passes"]["builder"]["precision"] == "fp32"
    assert any(m.startswith("Olive pass 1/1: builder (ModelBuilder)") for m in events)
    assert any("verifying adapter 'beta'" in m for m in events)

    engine = load_engine(folder)
    try:
        answers = {
            m: engine.generate("hello world", max_tokens=8, adapter=m).text for m in (None, "alpha", "beta")
        }
    finally:
        engine.close()
    assert len(set(answers.values())) == 3  # each adapter changes the answer its own way


def test_a_merged_adapter_converts_into_a_plain_model_verified_against_the_merge(
    ray_local, store, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(store))
    adapter = store / "adapters-job" / "adapters" / "alpha"
    spec = conversion_pb2.ConversionSpec(model_uri=str(store / "base"), adapter_uris=[f"support={adapter}"],
                                         merge_adapters=True, precision=conversion_pb2.FP32)  # fmt: skip
    result = _run(spec, tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapters").exists()
    manifest = artifacts.read_manifest(result["output_uri"])
    assert manifest.extra["merged_adapter"] == "support"
    assert result["verification"]["passed"] and result["verification"]["token_agreement"] == 1.0

    plain = _run(conversion_pb2.ConversionSpec(model_uri=str(store / "base"), precision=conversion_pb2.FP32),
                 tmp_path / "plain")  # fmt: skip
    texts = []
    for uri in (result["output_uri"], plain["output_uri"]):
        engine = load_engine(artifacts.local_path(uri))
        texts.append(engine.generate("hello world", max_tokens=8).text)
        engine.close()
    assert texts[0] != texts[1]


def test_a_truncated_checkpoint_fails_the_job_with_that_reason_and_leaves_nothing(
    ray_local, store, tmp_path, monkeypatch
):
    sealed = shutil.copytree(store / "base", tmp_path / "sealed")  # an artifact: its manifest has the hashes
    plain = shutil.copytree(store / "base", tmp_path / "plain")
    (plain / "manifest.json").unlink()  # a plain Hugging Face folder
    for broken in (sealed, plain):
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    with pytest.raises(ConversionError, match="model.safetensors changed since it was sealed"):
        _run(conversion_pb2.ConversionSpec(model_uri=str(sealed)), tmp_path / "out")
    with pytest.raises(ConversionError, match="model.safetensors is truncated"):
        _run(conversion_pb2.ConversionSpec(model_uri=str(plain)), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "sealed"]  # no output, no staging folder
