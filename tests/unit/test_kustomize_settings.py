"""The settings the kustomize overlays give the services and the Ray pods, checked on the built objects.

What a container ends up with is merged from its ConfigMaps and env as a
cluster would merge them: every service gets the agreed settings, every
SLMOPS_* setting an overlay sets is declared, the Ray worker groups the
services are told about match the RayCluster itself, and what jobs read
reaches the Ray pods too. No cluster is involved.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit._charts import SERVICES, find, one
from tests.unit._kustomize import (
    COMPONENT,
    OVERLAYS,
    build_overlays,
    container_env,
    main_container,
    mount_for,
    quantity,
    ray_pods,
    secret_env_from,
    service_pods,
)


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return build_overlays()


# --- 1. the agreed settings ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_get_the_agreed_settings(built, overlay):
    docs = built[overlay]
    runtime = one(built["cluster"], "ClusterServingRuntime")["metadata"]["name"]
    for component, template in service_pods(docs).items():
        container = main_container(template)
        env = container_env(docs, container)
        assert env["SLMOPS_JOB_ENTRYPOINT_CPUS"] == "1", component
        assert env["SLMOPS_KSERVE_DEPLOYMENT_MODE"] in ("Standard", "Knative"), component
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?", env["SLMOPS_KSERVE_OWNER"])
        assert env["SLMOPS_KSERVE_RUNTIME"] == runtime
        port = int(env["SLMOPS_METRICS_PORT"])
        assert port == 9464
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        data_dir = env["SLMOPS_DATA_DIR"]
        assert mount_for(template, data_dir) is not None, f"{component}: {data_dir} not mounted"
    for service in find(docs, "Service"):
        if service["spec"]["selector"].get(COMPONENT) in SERVICES:
            assert {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"} in service[
                "spec"
            ]["ports"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_slmops_setting_the_overlay_sets_is_declared(built, overlay):
    """A misspelt SLMOPS_* name would be ignored silently: each one the overlay sets
    on a service or Ray pod is a setting services/slmops/core/settings.py declares."""
    from slmops.core import settings

    declared = {var.env for var in settings.VARS.values()}
    docs = built[overlay]
    for where, template in [*service_pods(docs).items(), *ray_pods(docs).items()]:
        names = {n for n in container_env(docs, main_container(template)) if n.startswith("SLMOPS_")}
        assert names and names <= declared, f"{where}: {sorted(names - declared)}"


def test_prod_serves_with_knative_and_an_account_that_reads_the_store(built):
    docs = built["prod"]
    serving = main_container(service_pods(docs)["serving"])
    env = container_env(docs, serving)
    assert env["SLMOPS_KSERVE_DEPLOYMENT_MODE"] == "Knative"  # canary rollouts
    assert env["SLMOPS_ARTIFACT_ROOT"].startswith("s3://")
    account = one(docs, "ServiceAccount", env["SLMOPS_KSERVE_SERVICE_ACCOUNT"])
    attached = {s["name"] for s in account.get("secrets", [])}
    assert secret_env_from(serving) and secret_env_from(serving) <= attached


def test_dev_maps_the_shared_claim_for_kserve(built):
    docs = built["dev"]
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    for where, template in [*service_pods(docs).items(), *ray_pods(docs).items()]:
        env = container_env(docs, main_container(template))
        root = env["SLMOPS_ARTIFACT_ROOT"]
        if where in SERVICES:
            assert env["SLMOPS_SHARED_CLAIM"] == claim
            mount_path = env["SLMOPS_SHARED_MOUNT_PATH"]
        else:
            mount_path = container_env(docs, main_container(service_pods(docs)["serving"]))[
                "SLMOPS_SHARED_MOUNT_PATH"
            ]
        volume = mount_for(template, mount_path)
        assert volume and volume["persistentVolumeClaim"]["claimName"] == claim, where
        assert root.startswith(f"file://{mount_path}/"), where
        assert mount_path in env["SLMOPS_ALLOWED_ROOTS"].split(","), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_worker_groups_setting_describes_the_ray_cluster(built, overlay):
    docs = built[overlay]
    groups = one(docs, "RayCluster")["spec"]["workerGroupSpecs"]
    for component, template in service_pods(docs).items():
        env = container_env(docs, main_container(template))
        declared = json.loads(env["SLMOPS_RAY_WORKER_GROUPS"])
        assert [g["name"] for g in declared] == [g["groupName"] for g in groups], component
        for want, group in zip(declared, groups):
            limits = main_container(group["template"])["resources"]["limits"]
            assert want["maxReplicas"] == group["maxReplicas"], want["name"]
            assert quantity(want["cpus"]) == quantity(
                group["rayStartParams"].get("num-cpus", limits["cpu"])
            ), want["name"]
            gpus = group["rayStartParams"].get("num-gpus", limits.get("nvidia.com/gpu", 0))
            assert quantity(want["gpus"]) == quantity(gpus), want["name"]
            assert want["memory"] == quantity(limits["memory"]), want["name"]
        # The services read it with this parser; it must accept what the overlay says.
        from slmops.core import ray_capacity

        parsed = ray_capacity.parse_worker_groups(env["SLMOPS_RAY_WORKER_GROUPS"])
        assert [(g.name, g.max_replicas) for g in parsed] == [
            (g["groupName"], g["maxReplicas"]) for g in groups
        ]
    # Drivers ask for one CPU: some group must have room for one beside a task.
    assert any(
        quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) >= 2 for g in groups
    )


# --- 2. what jobs read is on the Ray pods too ---------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_forwarded_settings_are_on_the_ray_pods_too(built, overlay):
    """A Ray job gets the services' values of ray_jobs._FORWARDED with its
    submission; Ray's own worker processes (Ray Data, Train workers started by
    the cluster) read the pod's environment, so the two must agree."""
    from slmops.core.jobs import ray_jobs

    docs = built[overlay]
    services = service_pods(docs)
    service_env = {c: container_env(docs, main_container(t)) for c, t in services.items()}
    service_secrets = set().union(*(secret_env_from(main_container(t)) for t in services.values()))
    checked = 0
    for where, template in ray_pods(docs).items():
        container = main_container(template)
        env = container_env(docs, container)
        for name in ray_jobs._FORWARDED:
            values = {c: e[name] for c, e in service_env.items() if name in e}
            if not values:
                continue
            assert len({json.dumps(v, sort_keys=True) for v in values.values()}) == 1, name
            assert env.get(name) == next(iter(values.values())), f"{where}: {name}"
            checked += 1
        # Object-store credentials (and AWS_ENDPOINT_URL) come from the same Secrets.
        assert service_secrets <= secret_env_from(container), where
        assert mount_for(template, env["SLMOPS_DATA_DIR"]) is not None, where
    assert checked, "no forwarded setting was compared"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_can_take_job_secrets(built, overlay):
    """Keys a job reads itself (a teacher's API key named by api_key_env) come from
    one optional Secret on every Ray group, GPU group included."""
    for where, template in ray_pods(built[overlay]).items():
        refs = [s["secretRef"] for s in main_container(template).get("envFrom", []) if "secretRef" in s]
        assert {"name": "slmops-job-secrets", "optional": True} in refs, where
