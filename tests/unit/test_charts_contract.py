"""What the chart promises the code and the operators KubeRay and KServe, checked
over the profiles an install is made of.

Each profile is rendered with the real helm (see test_charts.py). The invariants:
one artifact store every stage shares; every setting a Ray job reads is on the
Ray pods; the Ray token comes from KubeRay (spec.authOptions); the RayCluster is
replaced on a new image; the services know the worker groups; KServe gets a
ServiceAccount that reaches the store; every workload with replicas has a
disruption budget. test_charts_profiles.py checks the single profiles, RBAC
and the names of two releases.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit._chart_profiles import (
    PROFILES,
    apply_sets,
    env_from_secrets,
    profile_values,
    quantity_bytes,
    quantity_cpus,
    ray_groups,
    render_profile,
    service_pods,
    write_gpu_values,
)
from tests.unit._charts import check, container_env, find, one

RAY_TOKEN_FILE = "/var/run/slmops/ray/token"
SERVICE_GID = 10001  # podSecurityContext runAsGroup/fsGroup of the service pods


@pytest.fixture(scope="module")
def gpu_values(tmp_path_factory) -> Path:
    return write_gpu_values(tmp_path_factory.mktemp("values"))


@pytest.fixture(scope="module", params=list(PROFILES))
def profile(request, helm, gpu_values) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_profile(request.param, gpu_values)


# --- invariants over every profile -------------------------------------------


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_lints_strictly(helm, gpu_values, tmp_path, name):
    files, sets = PROFILES[name]
    extra = tmp_path / "profile.yaml"
    extra.write_text(yaml.safe_dump(apply_sets({}, sets)))
    paths = [gpu_values if f == "<gpu>" else Path(f) for f in files]
    assert check.helm_lint([*paths, extra]) == [], name


def test_every_profile_validates_against_kubernetes_and_the_crds(profile):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")
    name, docs = profile
    assert check.validate_manifests(docs) == [], name


def test_every_stage_shares_one_artifact_store(profile):
    name, docs = profile
    services, groups = service_pods(docs), ray_groups(docs)
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
    service = service_pods(docs)["training"]["containers"][0]
    service_env = container_env(service)
    job_keys = {
        k
        for k in service_env
        if k.startswith(("SLMOPS_ALLOWED_", "AWS_", "OTEL_EXPORTER_"))
        or k in ("SLMOPS_ARTIFACT_ROOT", "SLMOPS_JOB_PYTHON", "SLMOPS_DATA_DIR")
    }
    assert {"SLMOPS_ARTIFACT_ROOT", "SLMOPS_JOB_PYTHON", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= job_keys
    for group, _, template in ray_groups(docs):
        container = template["spec"]["containers"][0]
        env = container_env(container)
        assert {k: env.get(k) for k in job_keys} == {k: service_env[k] for k in job_keys}, (name, group)
        # Object-store credentials reach the jobs as they reach the services.
        assert set(env_from_secrets(service)) <= set(env_from_secrets(container)), (name, group)
        # KubeRay sets the Ray token itself (spec.authOptions): never an env value of ours.
        assert not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & env.keys(), (name, group)


def test_the_ray_token_is_kuberays_and_the_services_read_it_as_a_file(profile):
    name, docs = profile
    cluster = one(docs, "RayCluster", "slmops-ray")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    for svc, pod in service_pods(docs).items():
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
    for group, _, template in ray_groups(docs):
        assert re.fullmatch(r"[0-9a-f]{16}", template["metadata"]["annotations"]["slmops.io/job-code"]), group


def test_services_know_the_worker_groups_and_drivers_stay_off_the_head(profile, gpu_values):
    name, docs = profile
    values = profile_values(name, gpu_values)
    expected = []
    for group in values["ray"]["workerGroups"]:
        resources = group.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        params = group.get("rayStartParams") or {}
        expected.append(
            {
                "name": group["name"],
                "maxReplicas": group["maxReplicas"],
                "cpus": quantity_cpus(params.get("num-cpus") or limits.get("cpu") or requests.get("cpu")),
                "gpus": float(params.get("num-gpus") or group.get("gpus") or 0),
                "memory": quantity_bytes(limits.get("memory") or requests.get("memory")),
            }
        )
    head = one(docs, "RayCluster", "slmops-ray")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for svc, pod in service_pods(docs).items():
        env = container_env(pod["containers"][0])
        assert json.loads(env["SLMOPS_RAY_WORKER_GROUPS"]) == expected, (name, svc)
        assert float(env["SLMOPS_JOB_ENTRYPOINT_CPUS"]) >= 1  # a driver needs a worker's CPU
        assert env["SLMOPS_JOB_ENTRYPOINT_MEMORY"] == str(
            quantity_bytes(values["ray"]["jobDriver"]["memory"])
        )


def test_ray_pods_run_as_the_release_identity(profile, gpu_values):
    name, docs = profile
    values = profile_values(name, gpu_values)
    by_name = {g["name"]: g for g in values["ray"]["workerGroups"]}
    for group, _, template in ray_groups(docs):
        account = template["spec"].get("serviceAccountName")
        if group == "head":
            # With the autoscaler, KubeRay's own account (it binds the autoscaler's Role to it).
            expected = None if values["ray"]["autoscaling"]["enabled"] else "slmops"
        else:
            expected = by_name[group].get("serviceAccountName") or "slmops"
        assert account == expected, (name, group)


def test_inferenceservices_get_an_account_that_reaches_the_store(profile, gpu_values):
    name, docs = profile
    values = profile_values(name, gpu_values)
    env = container_env(service_pods(docs)["serving"]["containers"][0])
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
