"""Custom resources against the CRDs of the pinned KubeRay and KServe releases.

The CRD files are not in the repository: tests/fixtures/crds/README.md says
which release each comes from and where to put it. scripts/check_charts.py
turns their openAPIV3Schema into a JSON schema that refuses unknown fields, as
the API server's strict field validation does; the tests that need the files
skip without them. Without them the KServe kinds are validated against the
kserve SDK's generated models and the Ray kinds by their required fields: those
fallbacks are tested here with the files hidden, whether or not they are there.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from typing import Any

import pytest

from tests.unit._charts import ROOT, check

FIXTURES = ROOT / "tests" / "fixtures" / "crds"

PROJECT_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "InferenceService": "serving.kserve.io/v1beta1",
    "ServingRuntime": "serving.kserve.io/v1alpha1",
    "ClusterServingRuntime": "serving.kserve.io/v1alpha1",
}
CONTAINER = {"name": "main", "image": "example/image:1.0"}
KSERVE_KINDS = {"InferenceService", "ServingRuntime", "ClusterServingRuntime"}
RAY_KINDS = {"RayCluster", "RayJob"}
README = "tests/fixtures/crds/README.md"
MISSING = sorted(relative for kind, (relative, _) in check.CRD_FILES.items() if check.crd_path(kind) is None)
needs_crds = pytest.mark.skipif(
    bool(MISSING),
    reason=f"CRD files not in the repository ({', '.join(MISSING)}): {README} says where to get them",
)


def need_crd(kind: str) -> None:
    if check.crd_path(kind) is None:
        pytest.skip(f"{check.CRD_FILES[kind][0]} is not in the repository: {README} says where to get it")


@pytest.fixture()
def without_crds(monkeypatch) -> None:
    """Validation as in a checkout without the CRD files."""
    monkeypatch.setattr(check, "crd_path", lambda kind: None)


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


# --- the vendored files -----------------------------------------------------


def _readme_checksums() -> dict[str, str]:
    text = (FIXTURES / "README.md").read_text()
    return {path: digest for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def test_the_readme_lists_every_crd_file_with_its_checksum_and_the_files_are_ignored():
    sums = _readme_checksums()
    assert set(sums) == {relative for relative, _ in check.CRD_FILES.values()}
    assert "Apache License" in (FIXTURES / "LICENSE-Apache-2.0").read_text()
    assert "tests/fixtures/crds/**/*.yaml" in (ROOT / ".gitignore").read_text().splitlines()


@needs_crds
def test_the_crd_files_present_are_the_ones_listed_unmodified():
    sums = _readme_checksums()
    for kind, (relative, _) in check.CRD_FILES.items():
        path = check.crd_path(kind)
        assert path.as_posix().endswith(relative)
        source = check.crd_schema_source(kind)
        assert source.startswith("crd:") and source.endswith(relative)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[relative], relative


@pytest.mark.parametrize("kind", sorted(PROJECT_VERSIONS))
def test_each_crd_loads_and_serves_the_version_the_project_writes(kind):
    need_crd(kind)
    crd = check.load_crd(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["spec"]["names"]["kind"] == kind
    group, version = PROJECT_VERSIONS[kind].split("/")
    assert crd["spec"]["group"] == group
    assert version in check.crd_versions(kind)
    assert check.CRD_FILES[kind][1] == PROJECT_VERSIONS[kind]
    assert check.crd_validator(kind, version) is not None
    assert check.crd_validator(kind, "v9") is None


@needs_crds
def test_the_pinned_raycluster_has_auth_options_and_an_upgrade_strategy():
    schema = check.crd_validator("RayCluster", "v1").schema
    spec = schema["properties"]["spec"]["properties"]
    assert spec["authOptions"]["properties"]["mode"]["enum"] == ["disabled", "token"]
    assert set(spec["authOptions"]["properties"]) == {"mode", "secretName", "enableK8sTokenAuth"}
    assert spec["upgradeStrategy"]["properties"]["type"]["enum"] == ["Recreate", "None"]


@needs_crds
def test_the_pinned_inferenceservice_records_the_deployment_mode_in_its_status():
    schema = check.crd_validator("InferenceService", "v1beta1").schema
    assert schema["properties"]["status"]["properties"]["deploymentMode"] == {"type": "string"}
    assert "deploymentMode" not in schema["properties"]["spec"]["properties"]


# --- what the validation accepts and refuses --------------------------------


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


@minimal_objects
def test_a_valid_minimal_object_passes(doc):
    assert check.crd_schema_problems(doc) == []
    assert check.crd_problems(doc) == []
    assert check.validate_manifests([doc]) == []


# --- without the CRD files --------------------------------------------------


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


@needs_crds
def test_an_unknown_field_in_a_raycluster_is_refused_naming_it():
    doc = ray_cluster()
    doc["spec"]["headGroupSpec"]["rayStartParam"] = {}  # typo of rayStartParams
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    problems = check.crd_schema_problems(doc)
    assert problems == [
        "RayCluster/ray: spec.headGroupSpec.rayStartParam: unknown field (not in the CRD schema)",
        "RayCluster/ray: spec.workerGroupSpecs[0].template.spec.containers[0].imagePullPolice: "
        "unknown field (not in the CRD schema)",
    ]


@needs_crds
def test_an_unknown_field_in_an_inferenceservice_is_refused_naming_it():
    doc = inference_service()
    model = doc["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")  # wrong case
    doc["spec"]["deploymentMode"] = "Standard"  # an annotation, not a spec field
    problems = check.crd_schema_problems(doc)
    assert "InferenceService/student: spec.deploymentMode: unknown field (not in the CRD schema)" in problems
    assert (
        "InferenceService/student: spec.predictor.model.storageURI: unknown field (not in the CRD schema)"
        in problems
    )
    assert len(problems) == 2


@needs_crds
def test_an_unknown_top_level_field_is_refused():
    doc = serving_runtime()
    doc["specs"] = {}
    assert check.crd_schema_problems(doc) == [
        "ClusterServingRuntime/slmops-predictor: specs: unknown field (not in the CRD schema)"
    ]


@needs_crds
def test_a_wrong_type_is_refused_naming_the_field():
    ray = ray_cluster()
    ray["spec"]["workerGroupSpecs"][0]["replicas"] = "1"
    ray["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert check.crd_schema_problems(ray) == [
        "RayCluster/ray: spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
        "RayCluster/ray: spec.workerGroupSpecs[0].replicas: '1' is not of type 'integer'",
    ]
    isvc = inference_service()
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    assert check.crd_schema_problems(isvc) == [
        "InferenceService/student: spec.predictor.canaryTrafficPercent: '10' is not of type 'integer'"
    ]


@needs_crds
def test_a_missing_required_field_and_a_value_outside_an_enum_are_refused():
    ray = ray_cluster()
    del ray["spec"]["workerGroupSpecs"][0]["groupName"]
    ray["spec"]["authOptions"] = {"mode": "Token"}
    ray["spec"]["upgradeStrategy"] = {"type": "RollingUpdate"}
    problems = check.crd_schema_problems(ray)
    assert "RayCluster/ray: spec.authOptions.mode: 'Token' is not one of ['disabled', 'token']" in problems
    assert (
        "RayCluster/ray: spec.upgradeStrategy.type: 'RollingUpdate' is not one of ['Recreate', 'None']"
        in problems
    )
    assert "RayCluster/ray: spec.workerGroupSpecs[0]: 'groupName' is a required property" in problems
    runtime = serving_runtime()
    del runtime["spec"]["containers"]
    assert check.crd_schema_problems(runtime) == [
        "ClusterServingRuntime/slmops-predictor: spec: 'containers' is a required property"
    ]


def test_auth_options_and_upgrade_strategy_of_the_pinned_release_pass():
    ray = ray_cluster()
    ray["spec"]["authOptions"] = {"mode": "token", "secretName": "ray-token"}
    ray["spec"]["upgradeStrategy"] = {"type": "Recreate"}
    assert check.crd_problems(ray) == []


@needs_crds
def test_int_or_string_fields_take_both_and_nothing_else():
    isvc = inference_service()
    isvc["spec"]["predictor"]["model"]["resources"] = {"limits": {"cpu": 2, "memory": "4Gi"}}
    assert check.crd_schema_problems(isvc) == []
    isvc["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = 1.5
    (problem,) = check.crd_schema_problems(isvc)
    assert problem.startswith("InferenceService/student: spec.predictor.model.resources.limits.cpu: ")
    isvc["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = "two"
    (problem,) = check.crd_schema_problems(isvc)
    assert "resources.limits.cpu: 'two' does not match" in problem


@needs_crds
def test_preserve_unknown_fields_keeps_unknown_fields_where_the_crd_says_so():
    isvc = inference_service()
    isvc["status"] = {"deploymentMode": "Standard", "somethingNew": {"a": 1}}  # status preserves
    assert check.crd_schema_problems(isvc) == []


def test_strict_schema_conversion():
    schema = check.strict_schema(
        {
            "type": "object",
            "properties": {
                "port": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "x-kubernetes-int-or-string": True,
                },
                "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "open": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
                "maybe": {"type": "string", "nullable": True},
            },
        }
    )
    import jsonschema

    validator = jsonschema.Draft4Validator(schema)
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["open"]
    ok = {"port": 8080, "raw": {"x": 1}, "open": {"a": "b", "c": 2}, "map": {"k": "v"}, "maybe": None}
    assert list(validator.iter_errors(ok)) == []
    assert validator.is_valid({"port": "http"})
    assert not validator.is_valid({"port": 1.5})
    assert not validator.is_valid({"other": 1})
    assert not validator.is_valid({"map": {"k": 1}})


@needs_crds
def test_an_apiversion_the_crd_does_not_serve_is_refused():
    doc = ray_cluster()
    doc["apiVersion"] = "ray.io/v2"
    assert check.crd_schema_problems(doc) == [
        "RayCluster/ray: apiVersion: 'ray.io/v2' is not served by the CRD (ray.io/v1, ray.io/v1alpha1)"
    ]
    doc["apiVersion"] = "ray.io/v1alpha1"  # served, but deprecated: the project writes v1
    assert check.crd_schema_problems(doc) == ["RayCluster/ray: apiVersion: the project writes ray.io/v1"]
    isvc = inference_service()
    isvc["apiVersion"] = "serving.kubeflow.org/v1beta1"
    (problem,) = check.crd_schema_problems(isvc)
    assert "is not served by the CRD (serving.kserve.io/v1beta1)" in problem


def test_metadata_is_checked_as_object_meta():
    doc = inference_service()
    doc["metadata"]["annotations"]["replicas"] = 2
    (problem,) = check.crd_schema_problems(doc)
    assert problem.startswith("InferenceService/student: metadata.annotations.replicas")
    del doc["metadata"]["name"]
    assert "InferenceService/?: metadata.name is required" in check.crd_schema_problems(doc)


def test_operator_rules_beyond_the_schema():
    ray = ray_cluster()
    group = ray["spec"]["workerGroupSpecs"][0]
    group["minReplicas"], group["replicas"], group["maxReplicas"] = 3, 3, 2
    ray["spec"]["authOptions"] = {"mode": "token"}
    ray["spec"]["rayVersion"] = "2.46.0"
    assert check.crd_schema_problems(ray) == []  # the schema has no such rules
    assert check.crd_problems(ray) == [
        "RayCluster/ray: spec.workerGroupSpecs[0]: needs 0 <= minReplicas <= maxReplicas",
        "RayCluster/ray: spec.rayVersion: authOptions.mode token needs Ray >= 2.52.0",
    ]
    isvc = inference_service()
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Raw"
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 120
    problems = check.crd_problems(isvc)
    assert len(problems) == 2
    assert "deploymentMode: 'Raw' is not one of" in problems[0]
    assert problems[1].endswith("spec.predictor.canaryTrafficPercent: must be 0..100")


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
    monkeypatch.setattr(check, "crd_path", lambda kind: None)
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
