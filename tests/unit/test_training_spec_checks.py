"""Validation of TrainingSpec, deep: inside a real tiny model folder and real dataset files under the
data dir (the allowed root), the way the service does at Create; and the local inputs' checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.api.v1 import training_pb2 as pb
from slmops.core import artifacts
from slmops.core.quantities import parse_memory
from slmops.training.config import parse_override
from slmops.training.spec import from_proto
from tests.unit._training_spec_env import _problems, _spec, _uri, build_root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory)


@pytest.fixture(autouse=True)
def data_dir(root, monkeypatch) -> Path:
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(root))
    return root


# -- deep checks: inside the model, datasets and teacher ---------------------------


def test_unknown_lora_target_module_names_the_models_linear_layers(root):
    lora = pb.LoraConfig(target_modules=["q_proj", "query_key_value"])
    problems = _problems(_spec(root, method=pb.LORA, lora=lora))
    assert set(problems) == {"spec.lora.target_modules"}
    message = problems["spec.lora.target_modules"]
    assert "the qwen2 model has no query_key_value" in message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in message
    # Without deep checks the model is not opened.
    assert from_proto(_spec(root, method=pb.LORA, lora=lora), deep=False).lora.target_modules == [
        "q_proj",
        "query_key_value",
    ]


def test_offline_logit_distill_needs_stored_topk_with_ids(root):
    problems = _problems(_spec(root, method=pb.LOGIT_DISTILL, dataset_uri=_uri(root, "ds")))
    assert set(problems) == {"spec.dataset_uri"}
    assert "top-k log-probabilities with token ids" in problems["spec.dataset_uri"]
    # The same dataset serves an online teacher, which computes its distribution itself.
    online = _spec(
        root,
        method=pb.LOGIT_DISTILL,
        dataset_uri=_uri(root, "ds"),
        distill=pb.DistillConfig(teacher=str(root / "model")),
    )
    assert from_proto(online).distill.teacher == _uri(root, "model")

    problems = _problems(_spec(root, method=pb.LOGIT_DISTILL, dataset_uri=_uri(root, "topk-512")))
    vocab = json.loads((root / "model" / "config.json").read_text())["vocab_size"]
    assert (
        f"teacher's vocabulary (512 tokens) differs from the student's ({vocab})"
        in problems["spec.dataset_uri"]
    )
    named = _spec(root, method=pb.LOGIT_DISTILL, dataset_uri=_uri(root, "topk-named"))
    assert from_proto(named).dataset_uri == _uri(root, "topk-named")


def test_online_teacher_of_another_vocabulary_is_refused(root):
    spec = _spec(root, method=pb.LOGIT_DISTILL, distill=pb.DistillConfig(teacher=str(root / "big-vocab")))
    problems = _problems(spec)
    vocab = json.loads((root / "model" / "config.json").read_text())["vocab_size"]
    assert set(problems) == {"spec.distill.teacher"}
    assert f"(512 tokens) differs from the student's ({vocab})" in problems["spec.distill.teacher"]


def test_unknown_hub_model_is_refused_offline(root, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    problems = _problems(_spec(root, base=pb.ModelInit(model="nobody/no-such-model")))
    assert set(problems) == {"spec.base.model"}
    assert "nobody/no-such-model" in problems["spec.base.model"]
    teacher = _spec(root, method=pb.LOGIT_DISTILL, distill=pb.DistillConfig(teacher="nobody/no-such-teacher"))
    assert "cannot load the teacher's config" in _problems(teacher)["spec.distill.teacher"]


def test_shapes_the_job_would_refuse_are_refused_at_create(root):
    spec = _spec(
        root,
        base=pb.ModelInit(
            model=str(root / "model"), from_config=True, config_overrides={"hidden_size": "30"}
        ),
        hyperparameters=pb.Hyperparameters(max_seq_length=512),
    )
    problems = _problems(spec)
    assert set(problems) == {"spec.base.config_overrides", "spec.hyperparameters.max_seq_length"}
    assert (
        "512 exceeds the model's max_position_embeddings 256"
        in problems["spec.hyperparameters.max_seq_length"]
    )


def test_validation_losses_need_a_validation_split(root):
    search = pb.SearchSpec(
        space=[pb.SearchDimension(name="learning_rate", distribution="uniform", low=1e-4, high=1e-3)]
    )
    spec = _spec(
        root,
        dataset_uri=_uri(root, "train-only"),
        search=search,
        hyperparameters=pb.Hyperparameters(early_stopping_patience=2),
    )
    problems = _problems(spec)
    assert set(problems) == {"spec.search.metric", "spec.hyperparameters.early_stopping_patience"}
    search.metric = "train_loss"
    assert (
        from_proto(_spec(root, dataset_uri=_uri(root, "train-only"), search=search)).search.metric
        == "train_loss"
    )


def test_remote_models_are_checked_without_copying_their_weights(root, monkeypatch):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    monkeypatch.setenv("SLMOPS_ALLOWED_SCHEMES", "file,memory")  # memory:// stands in for a bucket
    fs = fsspec.filesystem("memory")
    for path in (root / "model").iterdir():
        fs.pipe(f"/models/tiny/{path.name}", path.read_bytes())
    copied: list[str] = []
    original = MemoryFileSystem.get_file

    def get_file(self, rpath, lpath, *args, **kwargs):
        copied.append(rpath.rsplit("/", 1)[-1])
        return original(self, rpath, lpath, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "get_file", get_file)
    try:
        spec = _spec(
            root,
            method=pb.LORA,
            base=pb.ModelInit(model="memory://models/tiny"),
            lora=pb.LoraConfig(target_modules=["nope"]),
        )
        problems = _problems(spec)
        assert set(problems) == {"spec.lora.target_modules"}  # the config was read from the remote folder
        assert "config.json" in copied and "tokenizer.json" in copied
        assert not [name for name in copied if name.endswith(".safetensors")]
        assert (
            "does not exist"
            in _problems(_spec(root, base=pb.ModelInit(model="memory://models/none")))["spec.base.model"]
        )
    finally:
        fs.rm("/models", recursive=True)


# -- local inputs ------------------------------------------------------------------


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


def test_local_inputs_must_be_inside_the_roots_and_complete(root):
    problems = _problems(_spec(root, base=pb.ModelInit(model="/etc"), dataset_uri=str(root / "empty")))
    assert "outside the allowed roots" in problems["spec.base.model"]
    assert "has no train.jsonl" in problems["spec.dataset_uri"]
    problems = _problems(
        _spec(root, method=pb.LOGIT_DISTILL, distill=pb.DistillConfig(teacher=str(root / "ds")))
    )
    assert "has no config.json" in problems["spec.distill.teacher"]
    # A hub id is not a local path: without deep checks it is left for the job to load.
    hub = _spec(root, base=pb.ModelInit(model="Qwen/Qwen2.5-0.5B"))
    assert from_proto(hub, deep=False).base.model == "Qwen/Qwen2.5-0.5B"


def test_local_inputs_become_absolute_uris(root, monkeypatch):
    monkeypatch.chdir(root)
    config = from_proto(_spec(root, base=pb.ModelInit(model="./model"), dataset_uri="ds"))
    assert config.base.model == artifacts.to_uri(root / "model")
    assert config.dataset_uri == artifacts.to_uri(root / "ds")
    # Remote URIs are read by the job as they are.
    assert from_proto(_spec(root, dataset_uri="s3://bucket/ds"), deep=False).dataset_uri == "s3://bucket/ds"


def test_a_copied_model_folder_is_checked_like_the_original(root, tmp_path, monkeypatch):
    """An extra allowed root (SLMOPS_ALLOWED_ROOTS) works like the data dir."""
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    shutil.copytree(root / "model", tmp_path / "copy")
    assert from_proto(
        _spec(root, base=pb.ModelInit(model=str(tmp_path / "copy")))
    ).base.model == artifacts.to_uri(tmp_path / "copy")
