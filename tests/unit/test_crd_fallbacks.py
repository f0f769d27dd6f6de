"""Custom resources validated without the CRD files: the KServe kinds against
the kserve SDK's generated models, the Ray kinds by their required fields
(scripts/chart_checks/sdk_fallbacks.py). The files are hidden here, whether or
not they are there.
"""

from __future__ import annotations

import pytest

from tests.unit._charts import check
from tests.unit._crd_objects import (
    KSERVE_KINDS,
    PROJECT_VERSIONS,
    hide_crd_files,
    inference_service,
    minimal_objects,
    ray_cluster,
    ray_job,
    serving_runtime,
)


@pytest.fixture()
def without_crds(monkeypatch) -> None:
    """Validation as in a checkout without the CRD files."""
    hide_crd_files(monkeypatch)


@pytest.mark.parametrize("kind", sorted(PROJECT_VERSIONS))
def test_without_the_files_nothing_is_reported_missing_and_the_source_says_what_is_used(kind, without_crds):
    expected = "kserve-sdk" if kind in KSERVE_KINDS else "required-fields"
    assert check.crd_schema_source(kind) == expected
    with pytest.raises(FileNotFoundError, match="README"):
        check.load_crd.__wrapped__(kind)


@minimal_objects
def test_a_valid_minimal_object_passes_the_fallback(doc, without_crds):
    assert check.crd_schema_problems(doc) == []
    assert check.crd_problems(doc) == []
    assert check.validate_manifests([doc]) == []


def test_the_sdk_fallback_refuses_an_unknown_field_of_an_inferenceservice_naming_it(without_crds):
    doc = inference_service()
    model = doc["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")  # wrong case
    doc["spec"]["deploymentMode"] = "Standard"  # an annotation, not a spec field
    doc["spec"]["predictor"]["model"]["resources"]["limit"] = {"cpu": "1"}  # inside a Kubernetes type
    assert check.crd_schema_problems(doc) == [
        "InferenceService/student: spec.deploymentMode: unknown field "
        "(not in the kserve SDK's V1beta1InferenceServiceSpec)",
        "InferenceService/student: spec.predictor.model.resources.limit: unknown field "
        "(not in the kserve SDK's V1ResourceRequirements)",
        "InferenceService/student: spec.predictor.model.storageURI: unknown field "
        "(not in the kserve SDK's V1beta1ModelSpec)",
    ]
    assert check.validate_manifests([doc]) == check.crd_schema_problems(doc)


def test_the_sdk_fallback_refuses_a_wrong_type(without_crds):
    doc = inference_service()
    doc["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    doc["spec"]["predictor"]["minReplicas"] = True
    doc["spec"]["predictor"]["model"]["modelFormat"] = "onnx-genai"
    doc["spec"]["predictor"]["tolerations"] = {"key": "gpu"}
    assert check.crd_schema_problems(doc) == [
        "InferenceService/student: spec.predictor.canaryTrafficPercent: '10' is not of type 'integer'",
        "InferenceService/student: spec.predictor.minReplicas: True is not of type 'integer'",
        "InferenceService/student: spec.predictor.model.modelFormat: 'onnx-genai' is not of type 'object'",
        "InferenceService/student: spec.predictor.tolerations: {'key': 'gpu'} is not of type 'array'",
    ]
    runtime = serving_runtime("ServingRuntime")
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    runtime["spec"]["containers"][0]["args"] = ["--port", 8080]
    assert check.crd_schema_problems(runtime) == [
        "ServingRuntime/slmops-predictor: spec.containers[0].args[1]: 8080 is not of type 'string'",
        "ServingRuntime/slmops-predictor: spec.containers[0].ports[0].containerPort: "
        "'8080' is not of type 'integer'",
    ]


def test_the_sdk_fallback_takes_quantities_as_integers_or_strings(without_crds):
    doc = inference_service()
    doc["spec"]["predictor"]["model"]["resources"] = {"limits": {"cpu": 2, "memory": "4Gi"}}
    assert check.crd_schema_problems(doc) == []
    doc["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = 1.5
    assert check.crd_schema_problems(doc) == [
        "InferenceService/student: spec.predictor.model.resources.limits.cpu: 1.5 is not of type "
        "'integer or string'"
    ]


def test_the_sdk_fallback_refuses_an_unknown_field_of_a_servingruntime(without_crds):
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        doc = serving_runtime(kind)
        doc["spec"]["supportedModelFormats"][0]["autoselect"] = True  # autoSelect
        doc["spec"]["containers"][0]["imagePullPolice"] = "Always"
        doc["specs"] = {}
        assert check.crd_schema_problems(doc) == [
            f"{kind}/slmops-predictor: spec.containers[0].imagePullPolice: unknown field "
            "(not in the kserve SDK's V1Container)",
            f"{kind}/slmops-predictor: spec.supportedModelFormats[0].autoselect: unknown field "
            "(not in the kserve SDK's V1alpha1SupportedModelFormat)",
            f"{kind}/slmops-predictor: specs: unknown field (not in the kserve SDK's V1alpha1{kind})",
        ]


def test_the_sdk_fallback_checks_the_apiversion_and_the_metadata(without_crds):
    doc = inference_service()
    doc["apiVersion"] = "serving.kserve.io/v1alpha1"
    assert check.crd_schema_problems(doc) == [
        "InferenceService/student: apiVersion: 'serving.kserve.io/v1alpha1' is not serving.kserve.io/v1beta1 "
        "(the kserve SDK's V1beta1InferenceService)"
    ]
    doc = inference_service()
    doc["metadata"]["annotations"]["replicas"] = 2
    (problem,) = check.crd_schema_problems(doc)
    assert problem.startswith("InferenceService/student: metadata.annotations.replicas")


def test_the_sdk_fallback_keeps_the_operator_rules(without_crds):
    isvc = inference_service()
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Raw"
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 120
    assert check.crd_schema_problems(isvc) == []
    problems = check.crd_problems(isvc)
    assert len(problems) == 2
    assert "deploymentMode: 'Raw' is not one of" in problems[0]
    assert problems[1].endswith("spec.predictor.canaryTrafficPercent: must be 0..100")


def test_the_types_the_sdk_leaves_undefined_are_known():
    """A kserve upgrade that defines these (or leaves others undefined) shows here;
    values of these types are not checked by the fallback."""
    assert check.kserve_sdk_undefined_types() == {
        "V1alpha1WorkerSpec",  # ServingRuntime spec.workerSpec
        "KnativeDevServingPkgApisServingV1TrafficTarget",  # InferenceService status only
    }


def test_the_ray_fallback_checks_the_required_fields(without_crds):
    ray = ray_cluster()
    group = ray["spec"]["workerGroupSpecs"][0]
    del group["groupName"]
    group["replicas"] = "1"
    group["rayStartParams"] = {"num-cpus": 1}
    group["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    ray["spec"]["rayVersion"] = 2.6
    problems = check.crd_schema_problems(ray)
    assert problems[:2] == [
        "RayCluster/ray: spec.rayVersion: must be a string",
        "RayCluster/ray: spec.workerGroupSpecs[0].rayStartParams.num-cpus: 1 is not of type 'string'",
    ]
    assert problems[2].startswith("RayCluster/ray: spec.workerGroupSpecs[0].template: ")
    assert "imagePullPolice" in problems[2]
    assert problems[3:] == [
        "RayCluster/ray: spec.workerGroupSpecs[0].groupName: is required",
        "RayCluster/ray: spec.workerGroupSpecs[0].replicas: '1' is not of type 'integer'",
    ]
    del ray["spec"]["headGroupSpec"]
    assert "RayCluster/ray: spec.headGroupSpec: is required" in check.crd_schema_problems(ray)
    job = ray_job()
    job["apiVersion"] = "ray.io/v1alpha1"
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"] = {}
    assert check.crd_schema_problems(job) == [
        "RayJob/train: apiVersion: 'ray.io/v1alpha1' is not ray.io/v1",
        "RayJob/train: spec.rayClusterSpec.headGroupSpec.template: needs a pod template with spec.containers",
    ]
    del job["spec"]["rayClusterSpec"]
    assert "RayJob/train: spec: needs rayClusterSpec or clusterSelector" in check.crd_schema_problems(job)


def test_the_ray_fallback_keeps_the_operator_rules(without_crds):
    ray = ray_cluster()
    group = ray["spec"]["workerGroupSpecs"][0]
    group["minReplicas"], group["replicas"], group["maxReplicas"] = 3, 3, 2
    ray["spec"]["authOptions"] = {"mode": "token"}
    ray["spec"]["rayVersion"] = "2.46.0"
    assert check.crd_schema_problems(ray) == []
    assert check.crd_problems(ray) == [
        "RayCluster/ray: spec.workerGroupSpecs[0]: needs 0 <= minReplicas <= maxReplicas",
        "RayCluster/ray: spec.rayVersion: authOptions.mode token needs Ray >= 2.52.0",
    ]
