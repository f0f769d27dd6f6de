"""The custom resources the CRD tests validate: the smallest valid object of
each kind the project writes, and validation as in a checkout without the CRD
files (scripts/check_charts.py then falls back on the kserve SDK's models and
the Ray required fields).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.unit._charts import check

PROJECT_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "InferenceService": "serving.kserve.io/v1beta1",
    "ServingRuntime": "serving.kserve.io/v1alpha1",
    "ClusterServingRuntime": "serving.kserve.io/v1alpha1",
}
CONTAINER = {"name": "main", "image": "example/image:1.0"}
KSERVE_KINDS = {"InferenceService", "ServingRuntime", "ClusterServingRuntime"}


def hide_crd_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation as in a checkout without the CRD files."""
    monkeypatch.setattr(check.crds, "crd_path", lambda kind: None)


def ray_cluster() -> dict[str, Any]:
    pod = {"spec": {"containers": [dict(CONTAINER)]}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "ray", "labels": {"app": "ray"}},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": pod},
            "workerGroupSpecs": [
                {
                    "groupName": "cpu",
                    "replicas": 1,
                    "minReplicas": 0,
                    "maxReplicas": 2,
                    "rayStartParams": {},
                    "template": copy.deepcopy(pod),
                }
            ],
        },
    }


def inference_service() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "student",
            "annotations": {"serving.kserve.io/deploymentMode": "Standard"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "model": {
                    "modelFormat": {"name": "onnx-genai"},
                    "runtime": "slmops-predictor",
                    "storageUri": "s3://models/student/1",
                    "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                },
            }
        },
    }


def serving_runtime(kind: str = "ClusterServingRuntime") -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "slmops-predictor"},
        "spec": {
            "supportedModelFormats": [{"name": "onnx-genai", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [{**CONTAINER, "name": "kserve-container", "ports": [{"containerPort": 8080}]}],
        },
    }


def ray_job() -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "train"},
        "spec": {
            "entrypoint": "python -m train",
            "shutdownAfterJobFinishes": True,
            "rayClusterSpec": ray_cluster()["spec"],
        },
    }


# The smallest valid object of each kind (the checks read them, never change them).
minimal_objects = pytest.mark.parametrize(
    "doc",
    [
        ray_cluster(),
        ray_job(),
        inference_service(),
        serving_runtime("ServingRuntime"),
        serving_runtime("ClusterServingRuntime"),
    ],
    ids=lambda d: d["kind"],
)
