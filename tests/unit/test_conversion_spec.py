"""ConversionSpec validation and the conversion's pure helpers (no Olive run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.api.v1 import common_pb2, conversion_pb2
from slmops.conversion.config import ConversionConfig
from slmops.conversion.olive_convert import ConversionError, fix_genai_config, workflow_config
from slmops.conversion.spec import from_proto
from slmops.conversion.verify import thresholds_for
from slmops.core.errors import InvalidSpec


@pytest.fixture(autouse=True)
def allowed_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    return folder


def _problems(spec: conversion_pb2.ConversionSpec) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as caught:
        from_proto(spec)
    return dict(caught.value.problems)


def test_defaults_are_int4_on_cpu(checkpoint):
    config = from_proto(conversion_pb2.ConversionSpec(model_uri=str(checkpoint)))
    assert config.model_dump(exclude={"verification"}) == ConversionConfig(
        model_uri=f"file://{checkpoint}"
    ).model_dump(exclude={"verification"})
    assert (config.precision, config.execution_provider) == ("int4", "cpu")
    assert config.verification.thresholds == thresholds_for("int4")
    assert (config.verification.new_tokens, config.verification.max_prompts) == (16, 8)
    assert config.resources.num_cpus == 1.0
    assert json.loads(config.model_dump_json())["precision"] == "int4"


def test_supported_combinations_and_options_pass_through(checkpoint):
    spec = conversion_pb2.ConversionSpec(
        model_uri=f"file://{checkpoint}",
        precision=conversion_pb2.FP16,
        execution_provider=conversion_pb2.CUDA,
        extra_options={"int4_block_size": "64", "shared_embeddings": "true"},
        output_uri="/tmp/out",
        labels={"team": "a"},
        resources=common_pb2.ResourceRequest(cpus_per_worker=2, gpus_per_worker=1, memory="4Gi"),
    )
    config = from_proto(spec)
    assert (config.precision, config.execution_provider) == ("fp16", "cuda")
    assert config.extra_options == {"int4_block_size": "64", "shared_embeddings": "true"}
    assert config.resources.model_dump() == {
        "num_cpus": 2.0,
        "num_gpus": 1.0,
        "memory_bytes": 4 << 30,
    }
    assert (config.output_uri, config.labels) == ("/tmp/out", {"team": "a"})


@pytest.mark.parametrize(
    ("precision", "provider"),
    [
        (conversion_pb2.FP16, conversion_pb2.CPU),
        (conversion_pb2.BF16, conversion_pb2.EXECUTION_PROVIDER_UNSPECIFIED),
        (conversion_pb2.BF16, conversion_pb2.DML),
    ],
)
def test_precisions_the_provider_cannot_run_are_rejected(checkpoint, precision, provider):
    spec = conversion_pb2.ConversionSpec(
        model_uri=str(checkpoint), precision=precision, execution_provider=provider
    )
    assert "is not available for" in _problems(spec)["spec.precision"]


def test_every_problem_is_reported_at_once(tmp_path):
    spec = conversion_pb2.ConversionSpec(
        precision=conversion_pb2.FP16,
        adapter_uris=["file:///a"],
        foundry_local_package=True,
        extra_options={
            "hf_remote": "true",
            "int4_blok_size": "32",
            "use_qdq": "maybe",
            "exclude_embeds": "",
            "int4_block_size": "7",
        },
        resources=common_pb2.ResourceRequest(num_workers=3, memory="lots"),
    )
    problems = _problems(spec)
    assert "is required" in problems["spec.model_uri"]
    assert "FP16 is not available for CPU" in problems["spec.precision"]
    assert "Shape mismatch" in problems["spec.precision"]  # the measured reason
    assert "outside the allowed roots" in problems["spec.adapter_uris[0]"]
    assert "spec.foundry_local_package" not in problems  # available now
    assert "trust_remote_code" in problems["spec.extra_options[hf_remote]"]
    assert "not a model builder option" in problems["spec.extra_options[int4_blok_size]"]
    assert "empty" in problems["spec.extra_options[exclude_embeds]"]
    assert "true/True/1" in problems["spec.extra_options[use_qdq]"]
    assert "16, 32, 64, 128, 256" in problems["spec.extra_options[int4_block_size]"]
    assert "one task" in problems["spec.resources.num_workers"]
    assert "4Gi" in problems["spec.resources.memory"]


def test_model_folder_must_exist_and_be_a_checkpoint(tmp_path, checkpoint):
    missing = _problems(conversion_pb2.ConversionSpec(model_uri=str(tmp_path / "absent")))
    assert "is not a folder" in missing["spec.model_uri"]
    (tmp_path / "plain").mkdir()
    not_hf = _problems(conversion_pb2.ConversionSpec(model_uri=str(tmp_path / "plain")))
    assert "no config.json" in not_hf["spec.model_uri"]
    same = _problems(conversion_pb2.ConversionSpec(model_uri=str(checkpoint), output_uri=str(checkpoint)))
    assert "must differ" in same["spec.output_uri"]


def test_remote_model_uris_are_left_to_the_job():
    config = from_proto(conversion_pb2.ConversionSpec(model_uri="s3://bucket/ckpt"))
    assert config.model_uri == "s3://bucket/ckpt"


def test_workflow_is_one_model_builder_pass_without_remote_code(tmp_path):
    config = workflow_config(tmp_path / "m", tmp_path / "w", "int4", "cuda", {"int4_block_size": "32"})
    assert config["input_model"] == {"type": "HfModel", "model_path": str(tmp_path / "m")}
    builder = config["passes"]["builder"]
    assert builder["type"] == "ModelBuilder"
    assert builder["extra_options"] == {"int4_block_size": "32", "hf_remote": False}
    accel = config["systems"]["local_system"]["accelerators"][0]
    assert accel == {"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}
    assert config["cache_dir"].startswith(str(tmp_path / "w"))


def _genai_folder(tmp_path: Path, model_ids: dict, tokenizer_config: dict) -> tuple[Path, Path]:
    out, src = tmp_path / "out", tmp_path / "src"
    out.mkdir(parents=True)
    src.mkdir(parents=True)
    (out / "genai_config.json").write_text(json.dumps({"model": {"type": "qwen2", **model_ids}}))
    (src / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    added = [{"id": 0, "content": "<|endoftext|>"}, {"id": 1, "content": "<|pad|>"}]
    (src / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    return out, src


def test_null_special_token_ids_are_filled_from_the_tokenizer(tmp_path):
    nulls = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    out, src = _genai_folder(tmp_path, nulls, {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"})
    fix_genai_config(out, src)
    model = json.loads((out / "genai_config.json").read_text())["model"]
    assert (model["bos_token_id"], model["eos_token_id"], model["pad_token_id"]) == (0, 0, 1)


def test_ids_already_set_are_kept_and_a_missing_eos_is_an_error(tmp_path):
    out, src = _genai_folder(tmp_path / "a", {"bos_token_id": 5, "eos_token_id": 6, "pad_token_id": 7}, {})
    fix_genai_config(out, src)
    assert json.loads((out / "genai_config.json").read_text())["model"]["eos_token_id"] == 6
    out, src = _genai_folder(tmp_path / "b", {"eos_token_id": None}, {})
    with pytest.raises(ConversionError, match="no eos_token_id"):
        fix_genai_config(out, src)


def test_every_generation_eos_id_stops_and_the_chat_template_is_kept(tmp_path):
    """A chat checkpoint's end-of-turn token (generation_config's second EOS id) stops ORT GenAI too, and
    tokenizer_config.json carries the template transformers 5 saved as chat_template.jinja only."""
    from slmops.conversion.olive_convert import fix_tokenizer_config

    out, src = _genai_folder(tmp_path, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}, {})
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 301]}))
    fix_genai_config(out, src)
    assert json.loads((out / "genai_config.json").read_text())["model"]["eos_token_id"] == [0, 301]
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    (out / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    fix_tokenizer_config(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == "{{ messages[0]['content'] }}"
    assert config["tokenizer_class"] == "TokenizersBackend"  # no tokenizer.json: left as it is


def test_model_outside_the_allowed_roots_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path / "elsewhere"))
    problems = _problems(conversion_pb2.ConversionSpec(model_uri=str(tmp_path)))
    assert "outside the allowed roots" in problems["spec.model_uri"]


def test_head_size_that_ort_kernels_cannot_run_is_refused(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    config = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 48, "num_attention_heads": 4}
    (folder / "config.json").write_text(json.dumps(config))
    problems = _problems(conversion_pb2.ConversionSpec(model_uri=str(folder)))
    assert "head size 12" in problems["spec.model_uri"]


@pytest.mark.parametrize(
    ("verification", "field"),
    [
        ({"min_token_agreement": 1.5}, "spec.verification.min_token_agreement"),
        ({"max_kl": -1}, "spec.verification.max_kl"),
        ({"max_logits_rel_error": -0.1}, "spec.verification.max_logits_rel_error"),
        ({"new_tokens": 1000}, "spec.verification.new_tokens"),
        ({"max_prompts": -2}, "spec.verification.max_prompts"),
    ],
)
def test_bad_verification_overrides_name_their_field(checkpoint, verification, field):
    spec = conversion_pb2.ConversionSpec(
        model_uri=str(checkpoint), verification=conversion_pb2.VerificationSpec(**verification)
    )
    with pytest.raises(InvalidSpec) as bad:
        from_proto(spec)
    assert field in [f for f, _ in bad.value.problems]


def test_a_foundry_package_needs_a_template_foundry_can_express(tmp_path, checkpoint):
    template = "{{ messages[-1]['content'] }}"  # only the last message: no PromptTemplate says that
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    spec = conversion_pb2.ConversionSpec(model_uri=str(checkpoint), foundry_local_package=True)
    assert "cannot package for Foundry Local" in _problems(spec)["spec.foundry_local_package"]
