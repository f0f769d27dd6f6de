"""What single profiles of the chart promise, checked on the rendered objects.

Each profile is rendered with the real helm (see test_charts.py): the S3, shared
claim, GPU and all-on details; RBAC is what the code calls; secrets render the
same twice; two releases never share an object. test_charts_contract.py checks
the invariants over every profile.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.unit._chart_profiles import (
    env_from_secrets,
    ray_groups,
    render_profile,
    service_pods,
    write_gpu_values,
)
from tests.unit._charts import ROOT, check, container_env, find, one

KSERVE_BACKEND = ROOT / "services" / "slmops" / "serving" / "backends" / "kserve.py"
# Kinds the chart could make that live outside any namespace; the CRDs, where they are
# laid out (tests/fixtures/crds/README.md), add theirs.
KNOWN_CLUSTER_KINDS = {
    "ClusterServingRuntime",  # KServe
    "ClusterStorageContainer",
    "ClusterLocalModel",
    "ClusterRole",
    "ClusterRoleBinding",
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "CustomResourceDefinition",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}


@pytest.fixture(scope="module")
def gpu_values(tmp_path_factory) -> Path:
    return write_gpu_values(tmp_path_factory.mktemp("values"))


# --- profile details ---------------------------------------------------------


def test_the_s3_profile_tells_kserve_the_endpoint_and_region(helm, gpu_values):
    docs = render_profile("s3", gpu_values)
    sa = one(docs, "ServiceAccount", "slmops-storage")
    assert sa["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio.storage.svc:9000",
        "serving.kserve.io/s3-usehttps": "1",
        "serving.kserve.io/s3-region": "eu-west-1",
        "serving.kserve.io/s3-verifyssl": "1",
    }
    env = container_env(service_pods(docs)["pipeline"]["containers"][0])
    assert env["AWS_ENDPOINT_URL"] == "https://minio.storage.svc:9000"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    # A workload identity of the user's own replaces the chart's account.
    docs = render_profile("s3", gpu_values, "serving.kserve.serviceAccountName=models-reader")
    assert not find(docs, "ServiceAccount", "slmops-storage")
    env = container_env(service_pods(docs)["serving"]["containers"][0])
    assert env["SLMOPS_KSERVE_SERVICE_ACCOUNT"] == "models-reader"


def test_the_shared_claim_profile_maps_files_to_the_claim(helm, gpu_values):
    docs = render_profile("shared-claim", gpu_values)
    env = container_env(service_pods(docs)["serving"]["containers"][0])
    assert env["SLMOPS_ARTIFACT_ROOT"] == "file:///mnt/slmops/artifacts"
    assert env["SLMOPS_SHARED_CLAIM"] == "slmops-shared"
    assert env["SLMOPS_SHARED_MOUNT_PATH"] == "/mnt/slmops"
    assert env["SLMOPS_ALLOWED_ROOTS"] == "/mnt/slmops"


def test_the_gpu_profile_runs_its_group_on_the_cuda_image(helm, gpu_values):
    docs = render_profile("gpu", gpu_values)
    groups = {g: t["spec"]["containers"][0] for g, _, t in ray_groups(docs)}
    assert groups["a100"]["image"] == "ghcr.io/slmops/slmops-ray-cuda:0.1.0"
    assert groups["a100"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert groups["cpu"]["image"] == "ghcr.io/slmops/slmops-ray:0.1.0"
    annotations = {g: t["metadata"]["annotations"]["slmops.io/job-code"] for g, _, t in ray_groups(docs)}
    assert annotations["a100"] != annotations["cpu"] == annotations["head"]


def test_all_on_groups_take_their_own_pod_settings(helm, gpu_values):
    docs = render_profile("all-on", gpu_values)
    groups = {g: t["spec"] for g, _, t in ray_groups(docs)}
    for group, pod in groups.items():
        assert "slmops-teacher-keys" in env_from_secrets(pod["containers"][0]), group  # ray.secrets
    gpu = groups["gpu"]
    assert gpu["serviceAccountName"] == "slmops-gpu-jobs"
    assert container_env(gpu["containers"][0])["NCCL_DEBUG"] == "WARN"
    assert {"configMapRef": {"name": "slmops-gpu-settings"}} in gpu["containers"][0]["envFrom"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in gpu["containers"][0]["volumeMounts"]
    assert any(v["name"] == "dshm" for v in gpu["volumes"])
    assert "nodeAffinity" in groups["head"]["affinity"]
    assert container_env(groups["head"]["containers"][0])["RAY_LOG_TO_STDERR"] == "1"
    assert "NCCL_DEBUG" not in container_env(groups["cpu"]["containers"][0])


def test_a_new_image_tag_changes_every_ray_pod_template(helm, gpu_values):
    before = {g: t["metadata"]["annotations"] for g, _, t in ray_groups(render_profile("store", gpu_values))}
    after = {
        g: t["metadata"]["annotations"]
        for g, _, t in ray_groups(render_profile("store", gpu_values, "image.tag=0.2.0"))
    }
    assert before.keys() == after.keys()
    for group in before:
        assert before[group]["slmops.io/job-code"] != after[group]["slmops.io/job-code"], group


def test_an_existing_ray_token_is_handed_to_kuberay(helm, gpu_values):
    docs = render_profile("store", gpu_values, "ray.auth.existingSecret=ray-token")
    assert one(docs, "RayCluster", "slmops-ray")["spec"]["authOptions"] == {
        "mode": "token",
        "secretName": "ray-token",
    }
    pod = service_pods(docs)["training"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ray-auth"]
    assert volume["secret"]["secretName"] == "ray-token"
    assert volume["secret"]["items"] == [{"key": "auth_token", "path": "token"}]
    with pytest.raises(check.ToolError, match="existingSecretKey=auth_token"):
        render_profile(
            "store", gpu_values, "ray.auth.existingSecret=ray-token", "ray.auth.existingSecretKey=token"
        )


# --- RBAC is what the code calls ---------------------------------------------

_VERBS = {"get": "get", "read": "get", "list": "list", "create": "create", "patch": "patch",
          "delete": "delete", "replace": "update"}  # fmt: skip


def _backend_calls() -> tuple[set[str], set[str]]:
    """(verbs on custom objects, other Kubernetes API classes) the kserve backend uses."""
    source = KSERVE_BACKEND.read_text()
    methods = set(re.findall(r"\.(\w+?)_(?:namespaced|cluster)_custom_object(?:_status)?\b", source))
    apis = set(re.findall(r"\b(\w+Api)\(", source)) - {"CustomObjectsApi"}
    return {_VERBS[m] for m in methods}, apis


def test_the_serving_role_grants_exactly_what_the_kserve_backend_calls(helm, gpu_values):
    verbs, other_apis = _backend_calls()
    assert verbs >= {"create", "get", "patch", "delete"}, verbs  # the backend's lifecycle
    assert not other_apis, f"the backend uses {other_apis}: give the Role those resources"
    assert "PLURAL" in KSERVE_BACKEND.read_text() and '"inferenceservices"' in KSERVE_BACKEND.read_text()
    for profile in ("store", "all-on"):
        docs = render_profile(profile, gpu_values)
        role = one(docs, "Role", "slmops-serving")
        assert [(r["apiGroups"], r["resources"]) for r in role["rules"]] == [
            (["serving.kserve.io"], ["inferenceservices"])
        ]
        assert set(role["rules"][0]["verbs"]) == verbs
        assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")


# --- secrets and names -------------------------------------------------------

EXISTING_SECRETS = [
    "postgresql.enabled=true",
    "postgresql.auth.existingSecret=pg-password",
    "grpcAuth.token.existingSecret=grpc-token",
    "ray.auth.existingSecret=ray-token",
]


def test_with_existing_secrets_two_renders_are_identical(helm, gpu_values):
    first = render_profile("all-on", gpu_values, *EXISTING_SECRETS[1:])
    second = render_profile("all-on", gpu_values, *EXISTING_SECRETS[1:])
    assert first == second
    assert not find(first, "Secret")  # nothing generated, nothing random
    # Without them the chart generates tokens, which differ between `helm template` runs:
    # that is why GitOps installs must set existingSecret.
    generated = render_profile("all-on", gpu_values)
    again = render_profile("all-on", gpu_values)
    assert {d["metadata"]["name"] for d in find(generated, "Secret")} == {
        "slmops-grpc-auth",
        "slmops-postgresql",
    }
    assert find(generated, "Secret") != find(again, "Secret")


def _cluster_scoped_kinds() -> set[str]:
    kinds = set(KNOWN_CLUSTER_KINDS)
    for kind in check.CRD_FILES:
        path = check.crd_path(kind)
        if path is not None and yaml.safe_load(path.read_text())["spec"]["scope"] == "Cluster":
            kinds.add(kind)
    return kinds


@pytest.mark.parametrize("profile_name", ["store", "all-on"])
def test_two_releases_share_no_object(helm, gpu_values, profile_name):
    cluster_kinds = _cluster_scoped_kinds()
    a = render_profile(profile_name, gpu_values, release="team-a", namespace="ml")
    b = render_profile(profile_name, gpu_values, release="team-b", namespace="ml")
    c = render_profile(profile_name, gpu_values, release="team-a", namespace="ml-2")

    def keys(docs: list[dict], namespace: str) -> set[tuple[str, str, str]]:
        return {
            (
                d["kind"],
                "" if d["kind"] in cluster_kinds else d["metadata"].get("namespace", namespace),
                d["metadata"]["name"],
            )
            for d in docs
        }

    # Two releases in one namespace: no object of one is an object of the other.
    assert not keys(a, "ml") & keys(b, "ml")
    # The same release name in two namespaces: no cluster-scoped object is shared.
    assert not {k for k in keys(a, "ml") & keys(c, "ml-2") if k[0] in cluster_kinds}
