"""Every custom resource the project renders (the chart, the kustomize
overlays, the examples) and what the serving backend builds, against the CRDs
where their files are there and against the fallbacks without them.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest

from tests.unit._charts import check
from tests.unit._crd_objects import KSERVE_KINDS, hide_crd_files


@pytest.fixture()
def without_crds(monkeypatch) -> None:
    """Validation as in a checkout without the CRD files."""
    hide_crd_files(monkeypatch)


# --- everything the project renders -----------------------------------------


# The chart's defaults plus the artifact store an install needs, where the chart asks for one.
STORE_VALUES = [p for p in [check.CHART / "ci" / "store-values.yaml"] if p.exists()]
RENDERS = {
    "chart-default": lambda: check.helm_template(STORE_VALUES),
    "chart-all-on": lambda: check.helm_template([check.ALL_ON_VALUES]),
    "chart-mtls": lambda: check.helm_template([check.MTLS_VALUES]),
    **{
        f"kustomize-{path.name}": (lambda path=path: check.kustomize_build(path))
        for path in check.kustomize_dirs()
    },
    "examples": lambda: [doc for docs in check.example_manifests().values() for doc in docs],
}


@functools.cache
def render(source: str) -> list[dict[str, Any]]:
    return RENDERS[source]()


@pytest.mark.parametrize("source", sorted(RENDERS))
def test_every_custom_resource_the_project_renders_passes_its_schema(helm, source):
    """Against the CRDs where their files are there, else the fallbacks."""
    custom = [doc for doc in render(source) if doc.get("kind") in check.CRD_KINDS]
    assert custom, f"{source} renders no custom resource"
    assert [p for doc in custom for p in check.crd_problems(doc)] == []


@pytest.mark.parametrize("source", sorted(RENDERS))
def test_every_custom_resource_the_project_renders_passes_the_fallbacks(helm, source, without_crds):
    custom = [doc for doc in render(source) if doc.get("kind") in check.CRD_KINDS]
    assert custom, f"{source} renders no custom resource"
    assert {check.crd_schema_source(doc["kind"]) for doc in custom} <= {"kserve-sdk", "required-fields"}
    assert [p for doc in custom for p in check.validate_manifests([doc])] == []


def test_the_renders_have_kserve_kinds_for_the_sdk_fallback(helm):
    kserve = {
        source: [doc for doc in render(source) if doc.get("kind") in KSERVE_KINDS]
        for source in ("chart-default", "chart-all-on", "examples")
    }
    assert all(kserve.values()), {source: len(docs) for source, docs in kserve.items()}
    assert any(doc["kind"] == "InferenceService" for doc in kserve["examples"])


# --- what the serving backend builds ----------------------------------------


def _backend_objects(mode: str) -> list[dict[str, Any]]:
    from kubernetes import client as k8s

    from slmops.serving.backends import Revision
    from slmops.serving.backends.kserve import KServeBackend

    backend = KServeBackend(
        k8s.ApiClient(),
        namespace="slmops",
        runtime="slmops-predictor",
        runtime_gpu="slmops-predictor-cuda",
        service_account="slmops-storage",
        deployment_mode=mode,
        owner="slmops",
    )
    revisions = [
        Revision(1, "artifact://support-student/rev-1", "s3://slmops-artifacts/onnx-model/rev-0001"),
        Revision(2, "m", "pvc://slmops-artifacts/onnx-model/rev-0002", cpus=0.5, memory="3Gi"),
        Revision(3, "m", "s3://slmops-artifacts/onnx-model/rev-0003", cpus=2, memory="8Gi", gpus=1),
    ]
    if mode == "Knative":
        revisions.append(Revision(4, "m", "s3://slmops-artifacts/onnx-model/rev-0004", traffic_percent=10))
    return [backend.build("support-student", revision) for revision in revisions]


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_what_the_serving_backend_builds_passes_the_crd_and_the_sdk_fallback(mode, monkeypatch):
    built = _backend_objects(mode)
    assert {doc["kind"] for doc in built} == {"InferenceService"}
    assert any("canaryTrafficPercent" in doc["spec"]["predictor"] for doc in built) == (mode == "Knative")
    assert check.validate_manifests(built) == []  # the CRD where its file is there, else the SDK
    hide_crd_files(monkeypatch)
    assert check.crd_schema_source("InferenceService") == "kserve-sdk"
    assert check.validate_manifests(built) == []
    wrong = copy.deepcopy(built[0])
    wrong["spec"]["predictor"]["model"]["storageURI"] = wrong["spec"]["predictor"]["model"]["storageUri"]
    assert check.validate_manifests([wrong]) == [
        "InferenceService/support-student: spec.predictor.model.storageURI: unknown field "
        "(not in the kserve SDK's V1beta1ModelSpec)"
    ]


def test_the_renders_cover_the_kinds_the_project_deploys(helm):
    kinds = set()
    for source in RENDERS:
        try:
            kinds |= {doc.get("kind") for doc in render(source)}
        except check.ToolError:
            continue  # that render's own test reports it
    assert {"RayCluster", "InferenceService"} <= kinds
    assert kinds & {"ServingRuntime", "ClusterServingRuntime"}
