"""What the kustomize overlays promise a cluster with KServe and KubeRay, checked on the built objects.

Each overlay is built with `kubectl kustomize` (scripts/check_charts.py) and the
output is read as a cluster would read it: NetworkPolicies are evaluated the way
Kubernetes evaluates them (selectors, peers, ports) against the pods the
overlay makes and the pods KServe makes for an InferenceService; the settings a
container ends up with are merged from its ConfigMaps and env; the Ray worker
groups the services are told about are compared with the RayCluster itself.
No cluster is involved. test_kustomize_settings.py checks the settings the
services and the Ray pods get.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit._charts import ROOT, SERVICES, check, find, one
from tests.unit._kustomize import (
    COMPONENT,
    GATEWAY_NAMESPACES,
    K8S,
    KNATIVE_NAMESPACE,
    KUBERAY_NAME_LIMIT,
    KUBERAY_TOKEN_KEY,
    NS_NAME,
    OVERLAYS,
    build_overlays,
    container_env,
    copy_k8s,
    ingress_allowed,
    labels_of,
    main_container,
    mount_for,
    namespace_of,
    pod_templates,
    policies_selecting,
    predictor_cut_off,
    predictor_label_sets,
    ray_pods,
    selector_matches,
    service_pods,
)


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return build_overlays()


# --- 1. NetworkPolicies and predictors ---------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_network_policy_cuts_predictors_off_from_knative_and_the_gateway(built, overlay):
    docs = built[overlay]
    assert find(docs, "NetworkPolicy"), "the overlay should have its NetworkPolicies"
    assert predictor_cut_off(docs, built["cluster"]) == []


def test_the_predictor_check_catches_a_policy_over_part_of(built):
    """A policy selecting app.kubernetes.io/part-of (copied from the InferenceService
    onto its pods) that admits only the namespace is reported; the same policy
    admitting Knative's and the gateway's namespaces is not."""
    docs = [d for d in built["prod"] if d["kind"] != "NetworkPolicy"]
    namespace_only = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "namespace-only"},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "slmops"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {}}]}],
        },
    }
    assert predictor_cut_off([*docs, namespace_only], built["cluster"])
    admits = json.loads(json.dumps(namespace_only))
    admits["spec"]["ingress"].append(
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {NS_NAME: ns}}}
                for ns in (KNATIVE_NAMESPACE, GATEWAY_NAMESPACES[0])
            ]
        }
    )
    assert predictor_cut_off([*docs, admits], built["cluster"]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_select_slmops_pods_by_component(built, overlay):
    docs = built[overlay]
    templates = pod_templates(docs)
    for policy in find(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector.get("matchLabels", {}).get("component") == "predictor":
            continue  # the pods KServe makes (test_charts_predictor_security.py)
        selected = [w for w, t in templates if selector_matches(selector, labels_of(t))]
        assert selected, f"NetworkPolicy/{policy['metadata']['name']} selects no pod of the overlay"
        keys = {e["key"] for e in selector.get("matchExpressions", [])} | set(selector.get("matchLabels", {}))
        assert COMPONENT in keys, policy["metadata"]["name"]
    # The Ray pods, all groups, are behind a policy in every overlay.
    for where, template in ray_pods(docs).items():
        assert policies_selecting(docs, labels_of(template)), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_ports_are_open_to_the_services_and_ray_only(built, overlay):
    docs = built[overlay]
    namespace = namespace_of(docs)
    pods = ray_pods(docs)
    head = next(labels_of(t) for w, t in pods.items() if w.endswith(" head"))
    for component, template in service_pods(docs).items():
        src = {"namespace": namespace, "labels": labels_of(template)}
        for port in (6379, 8265, 10001):
            assert ingress_allowed(docs, head, port, src), f"{component} -> ray head:{port}"
    for where, template in pods.items():
        src = {"namespace": namespace, "labels": labels_of(template)}
        for target in pods.values():
            # GCS, the object manager and a worker port: Ray pods talk on many ports.
            for port in (6379, 8076, 10002):
                assert ingress_allowed(docs, labels_of(target), port, src), f"{where} -> :{port}"
    monitoring = {"namespace": "monitoring", "labels": {"app": "prometheus"}}
    for target in pods.values():
        assert ingress_allowed(docs, labels_of(target), 8080, monitoring)
        assert not ingress_allowed(docs, labels_of(target), 8265, monitoring)
    # Neither a predictor in the namespace nor any pod elsewhere reaches Ray.
    outsiders = [
        {"namespace": namespace, "labels": predictor_label_sets(docs, built["cluster"])[0]},
        {"namespace": namespace, "labels": {"run": "debug"}},
        {"namespace": "default", "labels": labels_of(service_pods(docs)["pipeline"])},
        {"namespace": KNATIVE_NAMESPACE, "labels": {"app": "activator"}},
    ]
    for src in outsiders:
        for port in (6379, 8265, 10001, 8080):
            assert not ingress_allowed(docs, head, port, src), f"{src} -> ray head:{port}"


def test_prod_services_take_grpc_from_each_other_and_the_gateway_only(built):
    docs = built["prod"]
    namespace = namespace_of(docs)
    services = service_pods(docs)
    predictor = predictor_label_sets(docs, built["cluster"])[0]
    for component, template in services.items():
        target = labels_of(template)
        port = SERVICES[component]
        assert ingress_allowed(
            docs, target, port, {"namespace": namespace, "labels": labels_of(services["pipeline"])}
        )
        assert ingress_allowed(docs, target, port, {"namespace": "istio-ingress", "labels": {}})
        assert not ingress_allowed(docs, target, port, {"namespace": namespace, "labels": predictor})
        assert not ingress_allowed(docs, target, port, {"namespace": "default", "labels": {}})
        assert ingress_allowed(docs, target, 9464, {"namespace": "monitoring", "labels": {}})
    collector = labels_of(
        next(t for _, t in pod_templates(docs) if labels_of(t).get(COMPONENT) == "otel-collector")
    )
    for src_labels in (
        predictor,
        labels_of(services["training"]),
        labels_of(next(iter(ray_pods(docs).values()))),
    ):
        assert ingress_allowed(docs, collector, 4317, {"namespace": namespace, "labels": src_labels})


def test_policies_survive_common_labels_of_a_further_overlay(tmp_path):
    """commonLabels also land in selectors: an overlay on prod adding one keeps
    Ray reachable from the services and among its pods, and predictors open."""
    k8s = copy_k8s(tmp_path)
    team = k8s / "overlays" / "team"
    team.mkdir()
    (team / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - ../prod\ncommonLabels:\n  example.com/team: ml\n"
    )
    docs = check.kustomize_build(team)
    cluster = check.kustomize_build(k8s / "cluster")
    namespace = namespace_of(docs)
    pods = ray_pods(docs)
    for where, template in pods.items():
        assert labels_of(template).get("example.com/team") == "ml", where
    head = next(labels_of(t) for w, t in pods.items() if w.endswith(" head"))
    for component, template in service_pods(docs).items():
        assert ingress_allowed(docs, head, 8265, {"namespace": namespace, "labels": labels_of(template)}), (
            component
        )
    for where, template in pods.items():
        assert ingress_allowed(docs, head, 6379, {"namespace": namespace, "labels": labels_of(template)}), (
            where
        )
    assert predictor_cut_off(docs, cluster) == []


# --- 2. Ray token authentication ---------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_send_the_token_kuberay_makes_for_the_cluster(built, overlay):
    docs = built[overlay]
    cluster = one(docs, "RayCluster")
    name = cluster["metadata"]["name"]
    assert len(name) <= KUBERAY_NAME_LIMIT, "KubeRay would shorten the Secret's name"
    token_auth = (cluster["spec"].get("authOptions") or {}).get("mode") == "token"
    assert token_auth
    for component, template in service_pods(docs).items():
        env = container_env(docs, main_container(template))
        assert (env.get("RAY_AUTH_MODE") == "token") == token_auth, component
        path = env["RAY_AUTH_TOKEN_PATH"]
        volume = mount_for(template, posixpath.dirname(path))
        assert volume is not None, f"{component}: nothing mounted at {posixpath.dirname(path)}"
        assert volume["secret"]["secretName"] == name, component
        assert {"key": KUBERAY_TOKEN_KEY, "path": posixpath.basename(path)} in volume["secret"]["items"]
        mount = next(m for m in main_container(template)["volumeMounts"] if m["name"] == volume["name"])
        assert mount.get("readOnly") is True
        # The Jobs API the services call is this cluster's head Service.
        assert env["RAY_ADDRESS"] == f"http://{name}-head-svc:8265", component


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_have_no_ray_address_and_the_pinned_ray_version(built, overlay):
    docs = built[overlay]
    cluster = one(docs, "RayCluster")
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and cluster["spec"]["rayVersion"] == pinned.group(1)
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for where, template in ray_pods(docs).items():
        env = container_env(docs, main_container(template))
        assert "RAY_ADDRESS" not in env, where
        # KubeRay sets the token on Ray containers itself; a second one would disagree.
        assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_TOKEN_PATH" not in env, where


# --- 3. the dev claim's storage class -----------------------------------------


def _dev_storage_parameter(k8s: Path) -> str:
    params = yaml.safe_load((k8s / "overlays" / "dev" / "storage-parameters.yaml").read_text())
    return params["data"]["storageClassName"]


def test_dev_claim_takes_its_storage_class_from_the_parameter(built):
    docs = built["dev"]
    claim = one(docs, "PersistentVolumeClaim", "slmops-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == _dev_storage_parameter(K8S)
    # The parameters stay on this side: nothing named after them is applied.
    assert not find(docs, "ConfigMap", "slmops-dev-parameters")
    assert "storage-parameters.yaml" in (K8S / "README.md").read_text()


def test_setting_the_parameter_changes_the_claim(tmp_path):
    k8s = copy_k8s(tmp_path)
    params = k8s / "overlays" / "dev" / "storage-parameters.yaml"
    text = params.read_text()
    placeholder = _dev_storage_parameter(k8s)
    params.write_text(text.replace(placeholder, "cephfs-rwx"))
    docs = check.kustomize_build(k8s / "overlays" / "dev")
    assert one(docs, "PersistentVolumeClaim", "slmops-artifacts")["spec"]["storageClassName"] == "cephfs-rwx"


# --- RBAC of the serving service ----------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_role_allows_exactly_the_calls_the_kserve_backend_makes(built, overlay):
    verbs = {"get": "get", "list": "list", "create": "create", "patch": "patch",
             "replace": "update", "delete": "delete"}  # fmt: skip
    used = set()
    for path in (ROOT / "services" / "slmops" / "serving").rglob("*.py"):
        for call in re.findall(
            r"\b(get|list|create|patch|replace|delete)_namespaced_custom_object\b", path.read_text()
        ):
            used.add(verbs[call])
    assert used, "the kserve backend makes no API call?"
    docs = built[overlay]
    role = one(docs, "Role", "slmops-serving")
    granted = {
        verb for rule in role["rules"] if "inferenceservices" in rule["resources"] for verb in rule["verbs"]
    }
    assert granted == used
    assert all(rule["resources"] == ["inferenceservices"] for rule in role["rules"])
    binding = one(docs, "RoleBinding", "slmops-serving")
    account = binding["subjects"][0]["name"]
    assert service_pods(docs)["serving"]["spec"]["serviceAccountName"] == account
