"""Which adapters a conversion takes, and what it refuses before anything is built."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from slmops.api.v1 import conversion_pb2
from slmops.conversion import spec as conversion_spec
from slmops.conversion.service import check_gpu
from slmops.conversion.spec import from_proto
from slmops.core import artifacts
from slmops.core.errors import Conflict, InvalidSpec

BASE_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": 300,
}  # fmt: skip


@pytest.fixture(autouse=True)
def allowed_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))


def make_base(folder: Path, seed: int = 0, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**BASE_CONFIG, **config}))
    rng = np.random.default_rng(seed)
    save_file({"model.embed_tokens.weight": rng.standard_normal((300, 64), dtype=np.float32)},
              str(folder / "model.safetensors"))  # fmt: skip
    return folder


def make_adapter(folder: Path, base: str, widths: dict[str, tuple[int, int]] | None = None, **config) -> Path:
    """A peft-shaped LoRA folder (rank 4) on q_proj and down_proj of layer 0."""
    widths = widths or {"q_proj": (64, 64), "down_proj": (256, 64)}
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config})
    )
    (folder / "base_model.json").write_text(json.dumps({"base_model": base}))
    tensors = {}
    for proj, (fan_in, fan_out) in widths.items():
        block = "self_attn" if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        key = f"base_model.model.model.layers.0.{block}.{proj}"
        tensors[f"{key}.lora_A.weight"] = np.zeros((4, fan_in), dtype=np.float32)
        tensors[f"{key}.lora_B.weight"] = np.zeros((fan_out, 4), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def problems_of(**fields) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as caught:
        from_proto(conversion_pb2.ConversionSpec(**fields))
    return dict(caught.value.problems)


def test_adapters_are_named_and_resolved_from_single_and_multi_adapter_artifacts(tmp_path):
    base = make_base(tmp_path / "base")
    make_adapter(tmp_path / "lora-job", str(base))
    multi = tmp_path / "multi"
    for name in ("billing", "support"):
        make_adapter(multi / "adapters" / name, str(base))
    config = from_proto(conversion_pb2.ConversionSpec(
        model_uri=str(base), adapter_uris=[f"chat={tmp_path / 'lora-job'}", str(multi)]))  # fmt: skip
    assert [(a.name, Path(artifacts.local_path(a.uri)).name) for a in config.adapters] == [
        ("chat", "lora-job"), ("billing", "billing"), ("support", "support")]  # fmt: skip
    unnamed = from_proto(
        conversion_pb2.ConversionSpec(model_uri=str(base), adapter_uris=[str(tmp_path / "lora-job")])
    )
    assert unnamed.adapters[0].name == "lora-job"


def test_an_adapter_trained_on_another_shape_is_refused_naming_both_bases(tmp_path):
    base = make_base(tmp_path / "base")
    other = tmp_path / "bigger-base"
    make_adapter(tmp_path / "ad", str(other), widths={"q_proj": (128, 128)})
    problem = problems_of(model_uri=str(base), adapter_uris=[str(tmp_path / "ad")])["spec.adapter_uris[0]"]
    assert f"trained on {other}" in problem and f"spec.model_uri {artifacts.to_uri(base)}" in problem
    assert "input width 128; the base's q_proj has 64" in problem
    make_adapter(tmp_path / "deep", str(base), widths={"q_proj": (64, 64)})
    shutil.move(tmp_path / "deep" / "adapter_model.safetensors", tmp_path / "x")
    save_file({"base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight": np.zeros((4, 64), np.float32)},
              str(tmp_path / "deep" / "adapter_model.safetensors"))  # fmt: skip
    deep = problems_of(model_uri=str(base), adapter_uris=[str(tmp_path / "deep")])["spec.adapter_uris[0]"]
    assert "adapts layer 5; the base has 2 layers" in deep


def test_an_adapter_whose_base_has_other_weights_is_refused_and_a_copy_is_accepted(tmp_path):
    base = make_base(tmp_path / "base", seed=0)
    sibling = make_base(tmp_path / "sibling", seed=1)  # same shape, other weights
    make_adapter(tmp_path / "ad", str(sibling))
    problem = problems_of(model_uri=str(base), adapter_uris=[str(tmp_path / "ad")])["spec.adapter_uris[0]"]
    assert re.search(rf"trained on {sibling}, not on spec.model_uri .*weights differ", problem)
    copy = shutil.copytree(base, tmp_path / "copy")
    make_adapter(tmp_path / "ad2", str(copy))
    assert from_proto(
        conversion_pb2.ConversionSpec(model_uri=str(base), adapter_uris=[str(tmp_path / "ad2")])
    ).adapters


def test_what_cannot_be_swapped_at_run_time_is_refused(tmp_path):
    base = make_base(tmp_path / "base")
    make_adapter(tmp_path / "dora", str(base), use_dora=True)
    make_adapter(tmp_path / "saves", str(base), modules_to_save=["lm_head"])
    (tmp_path / "plain").mkdir()
    make_adapter(tmp_path / "multi" / "adapters" / "a", str(base))
    make_adapter(tmp_path / "ok", str(base))
    problems = problems_of(model_uri=str(base), adapter_uris=[
        str(tmp_path / "dora"), str(tmp_path / "saves"), str(tmp_path / "plain"),
        f"x={tmp_path / 'multi'}", f"ok={tmp_path / 'ok'}", f"ok={tmp_path / 'ok'}"])  # fmt: skip
    assert "DoRA" in problems["spec.adapter_uris[0]"]
    assert "modules_to_save" in problems["spec.adapter_uris[1]"]
    assert "is not a LoRA adapter" in problems["spec.adapter_uris[2]"]
    assert "NAME= names one adapter" in problems["spec.adapter_uris[3]"]
    assert "also given by spec.adapter_uris[4]" in problems["spec.adapter_uris[5]"]


def test_run_time_adapters_need_cpu_int4_or_fp32_and_merging_takes_one(tmp_path):
    base = make_base(tmp_path / "base")
    make_adapter(tmp_path / "a", str(base))
    make_adapter(tmp_path / "b", str(base))
    cuda = problems_of(model_uri=str(base), adapter_uris=[str(tmp_path / "a")],
                       execution_provider=conversion_pb2.CUDA, precision=conversion_pb2.FP16)  # fmt: skip
    assert "CPU INT4 or FP32, not CUDA FP16" in cuda["spec.adapter_uris"]
    two = problems_of(
        model_uri=str(base), adapter_uris=[str(tmp_path / "a"), str(tmp_path / "b")], merge_adapters=True
    )
    assert "merges one adapter" in two["spec.merge_adapters"]
    assert "needs an adapter" in problems_of(model_uri=str(base), merge_adapters=True)["spec.merge_adapters"]
    merged = from_proto(conversion_pb2.ConversionSpec(
        model_uri=str(base), adapter_uris=[str(tmp_path / "a")], merge_adapters=True, precision=conversion_pb2.INT8))  # fmt: skip
    assert merged.merge_adapters and merged.precision == "int8"


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path):
    base = make_base(tmp_path / "gpt2", architectures=["GPT2LMHeadModel"])
    problem = problems_of(model_uri=str(base))["spec.model_uri"]
    assert "architecture 'GPT2LMHeadModel' is not one the converter supports" in problem
    assert "LlamaForCausalLM" in problem and "Qwen2ForCausalLM" in problem


def test_every_listed_architecture_is_one_the_installed_builder_converts():
    import inspect

    from onnxruntime_genai.models import builder

    source = inspect.getsource(builder.create_model)
    missing = [name for name in conversion_spec.ARCHITECTURES if f'"{name}"' not in source]
    assert not missing


class GpuLessCluster:
    """Stands in for the Ray cluster's resource totals (no GPU node can be attached here)."""

    def __init__(self, gpus: float):
        self.gpus = gpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0, "GPU": self.gpus}


def test_cuda_without_a_gpu_in_the_cluster_is_a_failed_precondition(tmp_path):
    base = make_base(tmp_path / "base")
    config = from_proto(
        conversion_pb2.ConversionSpec(model_uri=str(base), execution_provider=conversion_pb2.CUDA)
    )
    assert config.resources.num_gpus == 1.0
    with pytest.raises(Conflict, match="CUDA needs a GPU and the Ray cluster has 0"):
        check_gpu(config, GpuLessCluster(0))
    check_gpu(config, GpuLessCluster(1))
    check_gpu(from_proto(conversion_pb2.ConversionSpec(model_uri=str(base))), GpuLessCluster(0))
