"""What the chart promises the code and the operators KubeRay and KServe, checked
over the profiles an install is made of.

Each profile is rendered with the real helm (see test_charts.py). The invariants:
one artifact store every stage shares; every setting a Ray job reads is on the
Ray pods; the Ray token comes from KubeRay (spec.authOptions); the RayCluster is
replaced on a new image; the services know the worker groups; KServe gets a
ServiceAccount that reaches the store; RBAC is what the code calls; secrets
render the same twice; two releases never share an object.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit._charts import ROOT, SERVICES, check, container_env, find, one

KSERVE_BACKEND = ROOT / "services" / "slmops" / "serving" / "backends" / "kserve.py"
RAY_TOKEN_FILE = "/var/run/slmops/ray/token"
SERVICE_GID = 10001  # podSecurityContext runAsGroup/fsGroup of the service pods
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

GPU_GROUPS = {
    "ray": {
        "workerGroups": [
            {
                "name": "cpu",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": 3,
                "resources": {
                    "requests": {"cpu": "1500m", "memory": "6Gi"},
                    "limits": {"cpu": "3", "memory": "12Gi"},
                },
            },
            {
                "name": "a100",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": 2,
                "gpus": 2,
                "rayStartParams": {"num-cpus": "6"},
                "resources": {"requests": {"cpu": "8", "memory": "500M"}},
            },
        ]
    }
}

PROFILES: dict[str, tuple[list[str], list[str]]] = {
    # name: (values files under the chart or "<gpu>", --set values)
    "store": ([], ["artifacts.root=s3://bucket/prefix"]),
    "s3": (
        [],
        [
            "artifacts.root=s3://bucket/prefix",
            "artifacts.endpoint=https://minio.storage.svc:9000",
            "artifacts.credentialsSecret=store-credentials",
            "artifacts.s3.region=eu-west-1",
        ],
    ),
    "shared-claim": ([], ["artifacts.sharedClaim=slmops-shared"]),
    "gpu": (["<gpu>"], ["artifacts.root=gs://bucket/prefix"]),
    "all-on": ([str(check.ALL_ON_VALUES)], []),
}


@pytest.fixture(scope="module")
def gpu_values(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("values") / "gpu.yaml"
    path.write_text(yaml.safe_dump(GPU_GROUPS))
    return path


def _render(profile: str, gpu_values: Path, *more: str, release: str = "slmops", namespace: str = "slmops"):
    files, sets = PROFILES[profile]
    files = [gpu_values if f == "<gpu>" else Path(f) for f in files]
    return check.helm_template(files, [*sets, *more], release=release, namespace=namespace)


@pytest.fixture(scope="module", params=list(PROFILES))
def profile(request, helm, gpu_values) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _render(request.param, gpu_values)


# --- helpers ----------------------------------------------------------------


def _services(docs: list[dict]) -> dict[str, dict]:
    """service name -> pod spec, for the enabled services."""
    return {
        svc: d["spec"]["template"]["spec"]
        for svc in SERVICES
        for d in find(docs, "Deployment", f"slmops-{svc}")
    }


def _ray_groups(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(group name, group spec, pod template) for the head and every worker group."""
    spec = one(docs, "RayCluster", "slmops-ray")["spec"]
    groups = [("head", spec["headGroupSpec"], spec["headGroupSpec"]["template"])]
    groups += [(g["groupName"], g, g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return groups


def _env_from_secrets(container: dict) -> list[str]:
    return [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]


def _values(profile: str, gpu_values: Path) -> dict[str, Any]:
    """The values a profile sets on top of the chart's defaults (enough for the checks here)."""
    files, sets = PROFILES[profile]
    merged: dict[str, Any] = yaml.safe_load((check.CHART / "values.yaml").read_text())
    for f in files:
        path = gpu_values if f == "<gpu>" else Path(f)
        _merge(merged, yaml.safe_load(path.read_text()))
    return _apply_sets(merged, sets)


def _merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _apply_sets(into: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """into with each `--set key.path=value` written into it, the value kept a string."""
    for item in sets:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = into
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return into


def _bytes(quantity: Any) -> int:
    """A Kubernetes quantity in bytes, computed here independently of the chart."""
    if not quantity:
        return 0
    text = str(quantity)
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def _cpus(quantity: Any) -> float:
    text = str(quantity or 0)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- invariants over every profile -------------------------------------------


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_lints_strictly(helm, gpu_values, tmp_path, name):
    files, sets = PROFILES[name]
    extra = tmp_path / "profile.yaml"
    extra.write_text(yaml.safe_dump(_apply_sets({}, sets)))
    paths = [gpu_values if f == "<gpu>" else Path(f) for f in files]
    assert check.helm_lint([*paths, extra]) == [], name


def test_every_profile_validates_against_kubernetes_and_the_crds(profile):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")
    name, docs = profile
    assert check.validate_manifests(docs) == [], name


def test_every_stage_shares_one_artifact_store(profile):
    name, docs = profile
    services, groups = _services(docs), _ray_groups(docs)
    roots = {container_env(p["containers"][0]).get("SLMOPS_ARTIFACT_ROOT") for p in services.values()}
    roots |= {container_env(t["spec"]["containers"][0]).get("SLMOPS_ARTIFACT_ROOT") for _, _, t in groups}
    (root,) = roots
    assert root and re.match(r"^(s3|gs|az|file)://", root), (name, root)
    if root.startswith("file://"):
        # A file root must be the shared claim, mounted at the same path in every pod.
        serving_env = container_env(services["serving"]["containers"][0])
        claim, mount = serving_env["SLMOPS_SHARED_CLAIM"], serving_env["SLMOPS_SHARED_MOUNT_PATH"]
        assert root == f"file://{mount}/artifacts"
        pods = [*services.values(), *(t["spec"] for _, _, t in groups)]
        for pod in pods:
            (volume,) = [
                v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim
            ]
            mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
            assert [m["mountPath"] for m in mounts] == [mount]
            # Ray (uid 1000, gid 100) and the services (gid 10001) both write there.
            groups_of_pod = {
                pod["securityContext"].get("fsGroup"),
                *pod["securityContext"].get("supplementalGroups", []),
            }
            assert SERVICE_GID in groups_of_pod, name


def test_ray_pods_carry_every_setting_a_job_reads(profile):
    name, docs = profile
    service = _services(docs)["training"]["containers"][0]
    service_env = container_env(service)
    job_keys = {
        k
        for k in service_env
        if k.startswith(("SLMOPS_ALLOWED_", "AWS_", "OTEL_EXPORTER_"))
        or k in ("SLMOPS_ARTIFACT_ROOT", "SLMOPS_JOB_PYTHON", "SLMOPS_DATA_DIR")
    }
    assert {"SLMOPS_ARTIFACT_ROOT", "SLMOPS_JOB_PYTHON", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= job_keys
    for group, _, template in _ray_groups(docs):
        container = template["spec"]["containers"][0]
        env = container_env(container)
        assert {k: env.get(k) for k in job_keys} == {k: service_env[k] for k in job_keys}, (name, group)
        # Object-store credentials reach the jobs as they reach the services.
        assert set(_env_from_secrets(service)) <= set(_env_from_secrets(container)), (name, group)
        # KubeRay sets the Ray token itself (spec.authOptions): never an env value of ours.
        assert not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & env.keys(), (name, group)


def test_the_ray_token_is_kuberays_and_the_services_read_it_as_a_file(profile):
    name, docs = profile
    cluster = one(docs, "RayCluster", "slmops-ray")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    for svc, pod in _services(docs).items():
        env = container_env(pod["containers"][0])
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == RAY_TOKEN_FILE
        (volume,) = [v for v in pod["volumes"] if v["name"] == "ray-auth"]
        # KubeRay's Secret: named like the RayCluster, key auth_token.
        assert volume["secret"]["secretName"] == cluster["metadata"]["name"], (name, svc)
        assert volume["secret"]["items"] == [{"key": "auth_token", "path": "token"}]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ray-auth"]
        assert mount["mountPath"] == str(Path(RAY_TOKEN_FILE).parent) and mount["readOnly"] is True


def test_the_raycluster_is_replaced_when_the_job_code_changes(profile):
    name, docs = profile
    cluster = one(docs, "RayCluster", "slmops-ray")
    assert cluster["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    for group, _, template in _ray_groups(docs):
        assert re.fullmatch(r"[0-9a-f]{16}", template["metadata"]["annotations"]["slmops.io/job-code"]), group


def test_services_know_the_worker_groups_and_drivers_stay_off_the_head(profile, gpu_values):
    name, docs = profile
    values = _values(name, gpu_values)
    expected = []
    for group in values["ray"]["workerGroups"]:
        resources = group.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        params = group.get("rayStartParams") or {}
        expected.append(
            {
                "name": group["name"],
                "maxReplicas": group["maxReplicas"],
                "cpus": _cpus(params.get("num-cpus") or limits.get("cpu") or requests.get("cpu")),
                "gpus": float(params.get("num-gpus") or group.get("gpus") or 0),
                "memory": _bytes(limits.get("memory") or requests.get("memory")),
            }
        )
    head = one(docs, "RayCluster", "slmops-ray")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for svc, pod in _services(docs).items():
        env = container_env(pod["containers"][0])
        assert json.loads(env["SLMOPS_RAY_WORKER_GROUPS"]) == expected, (name, svc)
        assert float(env["SLMOPS_JOB_ENTRYPOINT_CPUS"]) >= 1  # a driver needs a worker's CPU
        assert env["SLMOPS_JOB_ENTRYPOINT_MEMORY"] == str(_bytes(values["ray"]["jobDriver"]["memory"]))


def test_ray_pods_run_as_the_release_identity(profile, gpu_values):
    name, docs = profile
    values = _values(name, gpu_values)
    by_name = {g["name"]: g for g in values["ray"]["workerGroups"]}
    for group, _, template in _ray_groups(docs):
        account = template["spec"].get("serviceAccountName")
        if group == "head":
            # With the autoscaler, KubeRay's own account (it binds the autoscaler's Role to it).
            expected = None if values["ray"]["autoscaling"]["enabled"] else "slmops"
        else:
            expected = by_name[group].get("serviceAccountName") or "slmops"
        assert account == expected, (name, group)


def test_inferenceservices_get_an_account_that_reaches_the_store(profile, gpu_values):
    name, docs = profile
    values = _values(name, gpu_values)
    env = container_env(_services(docs)["serving"]["containers"][0])
    account = env.get("SLMOPS_KSERVE_SERVICE_ACCOUNT")
    storage = find(docs, "ServiceAccount", "slmops-storage")
    if values["serving"]["kserve"]["serviceAccountName"]:
        assert account == values["serving"]["kserve"]["serviceAccountName"] and not storage
    elif values["artifacts"]["root"]:
        (sa,) = storage
        assert account == "slmops-storage"
        assert sa["metadata"]["namespace"] == env["SLMOPS_KSERVE_NAMESPACE"]
        secret = values["artifacts"]["credentialsSecret"]
        assert sa.get("secrets", []) == ([{"name": secret}] if secret else [])
    else:
        # A shared claim: KServe mounts pvc://<claim>/..., no credentials.
        assert account is None and not storage
        assert env["SLMOPS_SHARED_CLAIM"] == values["artifacts"]["sharedClaim"]


def test_every_workload_with_replicas_has_a_disruption_budget(profile):
    name, docs = profile
    budgets = find(docs, "PodDisruptionBudget")
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["spec"].get("replicas", 1) > 1:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            assert covering, (name, doc["metadata"]["name"])


# --- profile details ---------------------------------------------------------


def test_the_s3_profile_tells_kserve_the_endpoint_and_region(helm, gpu_values):
    docs = _render("s3", gpu_values)
    sa = one(docs, "ServiceAccount", "slmops-storage")
    assert sa["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio.storage.svc:9000",
        "serving.kserve.io/s3-usehttps": "1",
        "serving.kserve.io/s3-region": "eu-west-1",
        "serving.kserve.io/s3-verifyssl": "1",
    }
    env = container_env(_services(docs)["pipeline"]["containers"][0])
    assert env["AWS_ENDPOINT_URL"] == "https://minio.storage.svc:9000"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    # A workload identity of the user's own replaces the chart's account.
    docs = _render("s3", gpu_values, "serving.kserve.serviceAccountName=models-reader")
    assert not find(docs, "ServiceAccount", "slmops-storage")
    env = container_env(_services(docs)["serving"]["containers"][0])
    assert env["SLMOPS_KSERVE_SERVICE_ACCOUNT"] == "models-reader"


def test_the_shared_claim_profile_maps_files_to_the_claim(helm, gpu_values):
    docs = _render("shared-claim", gpu_values)
    env = container_env(_services(docs)["serving"]["containers"][0])
    assert env["SLMOPS_ARTIFACT_ROOT"] == "file:///mnt/slmops/artifacts"
    assert env["SLMOPS_SHARED_CLAIM"] == "slmops-shared"
    assert env["SLMOPS_SHARED_MOUNT_PATH"] == "/mnt/slmops"
    assert env["SLMOPS_ALLOWED_ROOTS"] == "/mnt/slmops"


def test_the_gpu_profile_runs_its_group_on_the_cuda_image(helm, gpu_values):
    docs = _render("gpu", gpu_values)
    groups = {g: t["spec"]["containers"][0] for g, _, t in _ray_groups(docs)}
    assert groups["a100"]["image"] == "ghcr.io/slmops/slmops-ray-cuda:0.1.0"
    assert groups["a100"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert groups["cpu"]["image"] == "ghcr.io/slmops/slmops-ray:0.1.0"
    annotations = {g: t["metadata"]["annotations"]["slmops.io/job-code"] for g, _, t in _ray_groups(docs)}
    assert annotations["a100"] != annotations["cpu"] == annotations["head"]


def test_all_on_groups_take_their_own_pod_settings(helm, gpu_values):
    docs = _render("all-on", gpu_values)
    groups = {g: t["spec"] for g, _, t in _ray_groups(docs)}
    for group, pod in groups.items():
        assert "slmops-teacher-keys" in _env_from_secrets(pod["containers"][0]), group  # ray.secrets
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
    before = {g: t["metadata"]["annotations"] for g, _, t in _ray_groups(_render("store", gpu_values))}
    after = {
        g: t["metadata"]["annotations"]
        for g, _, t in _ray_groups(_render("store", gpu_values, "image.tag=0.2.0"))
    }
    assert before.keys() == after.keys()
    for group in before:
        assert before[group]["slmops.io/job-code"] != after[group]["slmops.io/job-code"], group


def test_an_existing_ray_token_is_handed_to_kuberay(helm, gpu_values):
    docs = _render("store", gpu_values, "ray.auth.existingSecret=ray-token")
    assert one(docs, "RayCluster", "slmops-ray")["spec"]["authOptions"] == {
        "mode": "token",
        "secretName": "ray-token",
    }
    pod = _services(docs)["training"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ray-auth"]
    assert volume["secret"]["secretName"] == "ray-token"
    assert volume["secret"]["items"] == [{"key": "auth_token", "path": "token"}]
    with pytest.raises(check.ToolError, match="existingSecretKey=auth_token"):
        _render("store", gpu_values, "ray.auth.existingSecret=ray-token", "ray.auth.existingSecretKey=token")


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
        docs = _render(profile, gpu_values)
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
    first = _render("all-on", gpu_values, *EXISTING_SECRETS[1:])
    second = _render("all-on", gpu_values, *EXISTING_SECRETS[1:])
    assert first == second
    assert not find(first, "Secret")  # nothing generated, nothing random
    # Without them the chart generates tokens, which differ between `helm template` runs:
    # that is why GitOps installs must set existingSecret.
    generated = _render("all-on", gpu_values)
    again = _render("all-on", gpu_values)
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
    a = _render(profile_name, gpu_values, release="team-a", namespace="ml")
    b = _render(profile_name, gpu_values, release="team-b", namespace="ml")
    c = _render(profile_name, gpu_values, release="team-a", namespace="ml-2")

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
