"""Validation of TrainingSpec: defaults, every problem reported at once, proto field paths."""

from __future__ import annotations

import json

import pytest

from slmops.api.v1 import training_pb2 as pb
from slmops.core import artifacts
from slmops.core.errors import InvalidSpec
from slmops.training.spec import TrainingConfig, from_proto, parse_memory, parse_override

INPUTS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def local_inputs(tmp_path, monkeypatch):
    """A model folder and a dataset under the allowed roots, as the service would see them."""
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("")
    INPUTS.update(model=str(tmp_path / "teacher"), dataset=f"file://{tmp_path}/ds")


def _spec(**fields) -> pb.TrainingSpec:
    base = {
        "method": pb.SFT_DISTILL,
        "base": pb.ModelInit(model=INPUTS["model"]),
        "dataset_uri": INPUTS["dataset"],
    }
    base.update(fields)
    return pb.TrainingSpec(**base)


def _problems(spec: pb.TrainingSpec) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    return dict(info.value.problems)


def test_defaults_follow_the_proto_comments():
    config = from_proto(_spec())
    hp = config.hyperparameters
    assert (config.method, hp.learning_rate, hp.epochs, hp.batch_size) == ("sft_distill", 5e-4, 1, 16)
    assert (hp.max_seq_length, hp.precision, hp.max_steps, hp.gradient_accumulation_steps) == (
        128,
        "fp32",
        0,
        1,
    )
    assert (
        config.resources.num_workers,
        config.resources.cpus_per_worker,
        config.resources.gpus_per_worker,
    ) == (1, 1.0, 0.0)
    # The config is plain JSON and comes back identical.
    assert TrainingConfig.model_validate(json.loads(config.model_dump_json())) == config


def test_full_method_and_explicit_values():
    spec = _spec(
        method=pb.FULL,
        base=pb.ModelInit(
            model="m",
            from_config=True,
            config_overrides={
                "hidden_size": "48",
                "tie_word_embeddings": "false",
                "rms_norm_eps": "1e-5",
                "hidden_act": "gelu",
            },
        ),
        hyperparameters=pb.Hyperparameters(
            learning_rate=1e-3, epochs=3, batch_size=8, precision="BF16", seed=7
        ),
        resources={"num_workers": 2, "cpus_per_worker": 0.5, "memory": "2Gi"},
        labels={"team": "a"},
    )
    config = from_proto(spec)
    assert config.method == "full"
    assert config.base.config_overrides == {
        "hidden_size": 48,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
        "hidden_act": "gelu",
    }
    assert (config.hyperparameters.precision, config.hyperparameters.seed) == ("bf16", 7)
    assert (config.resources.num_workers, config.resources.memory_bytes) == (2, 2 * 1024**3)
    assert config.labels == {"team": "a"}


@pytest.mark.parametrize("method", [pb.LOGIT_DISTILL, pb.LORA, pb.QLORA])
def test_methods_not_available_yet(method):
    problems = _problems(_spec(method=method))
    assert "not available yet" in problems["spec.method"]
    assert pb.TrainingMethod.Name(method) in problems["spec.method"]


def test_every_problem_is_reported_at_once():
    spec = pb.TrainingSpec(
        base=pb.ModelInit(config_overrides={"hidden_size": "-4", "bad key": "1"}),
        hyperparameters=pb.Hyperparameters(
            learning_rate=-1,
            epochs=-2,
            batch_size=-1,
            warmup_ratio=1.5,
            weight_decay=2,
            precision="fp8",
            distill_temperature=2.0,
            seed=-3,
        ),
        resources={"num_workers": -1, "gpus_per_worker": -1, "memory": "lots"},
        lora=pb.LoraConfig(rank=8),
    )
    problems = _problems(spec)
    assert set(problems) == {
        "spec.method",
        "spec.base.model",
        "spec.base.config_overrides",
        "spec.base.config_overrides[bad key]",
        "spec.base.config_overrides[hidden_size]",
        "spec.dataset_uri",
        "spec.hyperparameters.learning_rate",
        "spec.hyperparameters.epochs",
        "spec.hyperparameters.batch_size",
        "spec.hyperparameters.warmup_ratio",
        "spec.hyperparameters.weight_decay",
        "spec.hyperparameters.precision",
        "spec.hyperparameters.distill_temperature",
        "spec.hyperparameters.seed",
        "spec.resources.num_workers",
        "spec.resources.gpus_per_worker",
        "spec.resources.memory",
        "spec.lora",
    }
    assert "is required" in problems["spec.method"]
    assert "from_config" in problems["spec.base.config_overrides"]


def test_batch_must_split_over_workers():
    problems = _problems(
        _spec(hyperparameters=pb.Hyperparameters(batch_size=10), resources={"num_workers": 3})
    )
    assert set(problems) == {"spec.hyperparameters.batch_size"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64", 64),
        ("-2", -2),
        ("0.1", 0.1),
        ("1e-5", 1e-5),
        ("True", True),
        ("false", False),
        ("null", None),
        ("silu", "silu"),
        ("nan", "nan"),
    ],
)
def test_parse_override(text, value):
    assert parse_override(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4Gi", 4 * 1024**3),
        ("512Mi", 512 * 1024**2),
        ("2G", 2 * 10**9),
        ("1.5Gi", int(1.5 * 1024**3)),
        ("1000", 1000),
        ("4 GiB", 4 * 1024**3),
        ("x", None),
        ("", None),
    ],
)
def test_parse_memory(text, value):
    assert parse_memory(text) == value


def test_local_inputs_must_be_inside_the_roots_and_complete(tmp_path):
    problems = _problems(_spec(base=pb.ModelInit(model="/etc"), dataset_uri=str(tmp_path)))
    assert "outside the allowed roots" in problems["spec.base.model"]
    assert "has no train.jsonl" in problems["spec.dataset_uri"]
    # A hub id is not a local path: it is left for the job to load.
    assert from_proto(_spec(base=pb.ModelInit(model="Qwen/Qwen2.5-0.5B"))).base.model == "Qwen/Qwen2.5-0.5B"


def test_local_inputs_become_absolute_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = from_proto(_spec(base=pb.ModelInit(model="./teacher"), dataset_uri=str(tmp_path / "ds")))
    assert config.base.model == artifacts.to_uri(tmp_path / "teacher")
    assert config.dataset_uri == artifacts.to_uri(tmp_path / "ds")
    # Remote URIs are read by the job as they are.
    assert from_proto(_spec(dataset_uri="s3://bucket/ds")).dataset_uri == "s3://bucket/ds"
