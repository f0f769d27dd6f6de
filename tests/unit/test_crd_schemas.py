"""Custom resources against the CRDs of the pinned KubeRay and KServe releases.

The CRD files are not in the repository: tests/fixtures/crds/README.md says
which release each comes from and where to put it. scripts/check_charts.py
turns their openAPIV3Schema into a JSON schema that refuses unknown fields, as
the API server's strict field validation does; the tests that need the files
skip without them. Without them the KServe kinds are validated against the
kserve SDK's generated models and the Ray kinds by their required fields:
test_crd_fallbacks.py tests those with the files hidden; test_crd_renders.py
validates what the project renders and builds.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.unit._charts import ROOT, check
from tests.unit._crd_objects import (
    PROJECT_VERSIONS,
    inference_service,
    minimal_objects,
    ray_cluster,
    serving_runtime,
)

FIXTURES = ROOT / "tests" / "fixtures" / "crds"
README = "tests/fixtures/crds/README.md"
MISSING = sorted(relative for kind, (relative, _) in check.CRD_FILES.items() if check.crd_path(kind) is None)
needs_crds = pytest.mark.skipif(
    bool(MISSING),
    reason=f"CRD files not in the repository ({', '.join(MISSING)}): {README} says where to get them",
)


def need_crd(kind: str) -> None:
    if check.crd_path(kind) is None:
        pytest.skip(f"{check.CRD_FILES[kind][0]} is not in the repository: {README} says where to get it")


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


@minimal_objects
def test_a_valid_minimal_object_passes(doc):
    assert check.crd_schema_problems(doc) == []
    assert check.crd_problems(doc) == []
    assert check.validate_manifests([doc]) == []


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
