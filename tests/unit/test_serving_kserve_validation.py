"""What a deployment request may ask of the kserve backend: models on the shared claim, resources, namespace."""

from __future__ import annotations

import os

import pytest

from slmops.core.errors import InvalidSpec, NotFound
from slmops.serving.validation import validate


@pytest.fixture()
def shared(tmp_path, monkeypatch):
    """The artifacts' claim mounted at <tmp>/shared, with a model folder on it."""
    mount = tmp_path / "shared"
    (mount / "onnx-model" / "student").mkdir(parents=True)
    (mount / "onnx-model" / "student" / "genai_config.json").write_text("{}")
    (tmp_path / "elsewhere" / "model").mkdir(parents=True)
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "kserve")
    monkeypatch.setenv("SLMOPS_KSERVE_NAMESPACE", "slmops")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", os.pathsep.join([str(mount), str(tmp_path / "elsewhere")]))
    monkeypatch.setenv("SLMOPS_SHARED_CLAIM", "slmops-artifacts")
    monkeypatch.setenv("SLMOPS_SHARED_MOUNT_PATH", str(mount))
    return tmp_path


def _problems(spec: dict) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as caught:
        validate(spec)
    return dict(caught.value.problems)


def test_a_model_on_the_shared_claim_is_given_to_kserve_as_pvc(shared):
    config = validate({"name": "student", "model_uri": f"file://{shared}/shared/onnx-model/student"})
    assert config["storage_uri"] == "pvc://slmops-artifacts/onnx-model/student"
    assert (
        config["model_uri"] == f"file://{shared}/shared/onnx-model/student"
    )  # the records keep the user's URI
    # A plain path is the same file:// URI.
    assert validate({"name": "student", "model_uri": str(shared / "shared/onnx-model/student")})["storage_uri"] \
        == "pvc://slmops-artifacts/onnx-model/student"  # fmt: skip


def test_a_local_model_off_the_claim_or_without_a_claim_is_refused(shared, monkeypatch):
    problems = _problems({"name": "student", "model_uri": str(shared / "elsewhere/model")})
    assert (
        "SLMOPS_SHARED_MOUNT_PATH" in problems["spec.model_uri"]
        and "slmops-artifacts" in problems["spec.model_uri"]
    )
    with pytest.raises(NotFound):
        validate({"name": "student", "model_uri": str(shared / "shared/onnx-model/missing")})

    monkeypatch.delenv("SLMOPS_SHARED_CLAIM")
    problems = _problems({"name": "student", "model_uri": str(shared / "shared/onnx-model/student")})
    assert "SLMOPS_SHARED_CLAIM" in problems["spec.model_uri"]
    assert validate({"name": "student", "model_uri": "s3://bucket/onnx-model/student"})["storage_uri"] \
        == "s3://bucket/onnx-model/student"  # fmt: skip


def test_resources_are_checked_and_kept(shared, monkeypatch):
    spec = {
        "name": "student",
        "model_uri": "s3://b/m",
        "resources": {"cpus_per_worker": 2.5, "memory": "6Gi"},
    }
    assert validate(spec)["resources"] == {"cpus": 2.5, "memory": "6Gi", "gpus": 0}

    problems = _problems({"name": "student", "model_uri": "s3://b/m", "resources": {
        "num_workers": 3, "gpus_per_worker": 0.5, "memory": "lots"}})  # fmt: skip
    assert set(problems) == {
        "spec.resources.num_workers",
        "spec.resources.gpus_per_worker",
        "spec.resources.memory",
    }

    problems = _problems({"name": "student", "model_uri": "s3://b/m", "resources": {"gpus_per_worker": 1}})
    assert "SLMOPS_KSERVE_RUNTIME_GPU" in problems["spec.resources.gpus_per_worker"]
    monkeypatch.setenv("SLMOPS_KSERVE_RUNTIME_GPU", "slmops-predictor-cuda")
    assert validate({"name": "student", "model_uri": "s3://b/m", "resources": {"gpus_per_worker": 1}})[
        "resources"]["gpus"] == 1  # fmt: skip


def test_the_namespace_is_the_configured_one_or_refused(shared):
    assert (
        validate({"name": "student", "model_uri": "s3://b/m", "namespace": "slmops"})["namespace"] == "slmops"
    )
    assert validate({"name": "student", "model_uri": "s3://b/m"})["namespace"] == "slmops"
    problems = _problems({"name": "student", "model_uri": "s3://b/m", "namespace": "team-b"})
    assert "SLMOPS_KSERVE_NAMESPACE" in problems["spec.namespace"] and "team-b" in problems["spec.namespace"]


def test_the_local_backend_refuses_what_it_cannot_honour(shared, monkeypatch):
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    model = str(shared / "shared/onnx-model/student")
    problems = _problems({"name": "student", "model_uri": model, "resources": {"cpus_per_worker": 2},
                          "namespace": "slmops"})  # fmt: skip
    assert set(problems) == {"spec.resources", "spec.namespace"}
    assert "resources" not in validate({"name": "student", "model_uri": model, "resources": {}})
