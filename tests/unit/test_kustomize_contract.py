"""What the kustomize overlays promise a cluster with KServe and KubeRay, checked on the built objects.

Each overlay is built with `kubectl kustomize` (scripts/check_charts.py) and the
output is read as a cluster would read it: NetworkPolicies are evaluated the way
Kubernetes evaluates them (selectors, peers, ports) against the pods the
overlay makes and the pods KServe makes for an InferenceService; the settings a
container ends up with are merged from its ConfigMaps and env; the Ray worker
groups the services are told about are compared with the RayCluster itself.
No cluster is involved.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit._charts import ROOT, SERVICES, check, find, one

K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
COMPONENT = "app.kubernetes.io/component"
NS_NAME = "kubernetes.io/metadata.name"
# KubeRay (ray-operator v1.5, raycluster_controller.go reconcileAuthSecret and
# common/pod.go SetContainerTokenAuthEnvVars): with authOptions.mode token it
# creates Secret utils.CheckName(<cluster name>), the name itself up to 50
# characters, holding the token under this key.
KUBERAY_TOKEN_KEY = "auth_token"
KUBERAY_NAME_LIMIT = 50
# Where Knative's activator and the ingress gateways run, and the ports they
# send to on a predictor pod: Knative's queue-proxy (8012) and the predictor (8080).
KNATIVE_NAMESPACE = "knative-serving"
GATEWAY_NAMESPACES = ("istio-system", "kourier-system")
PREDICTOR_PORTS = (8012, 8080)


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    docs = {name: check.kustomize_build(K8S / "overlays" / name) for name in OVERLAYS}
    docs["cluster"] = check.kustomize_build(K8S / "cluster")
    return docs


def _copy_k8s(tmp_path: Path) -> Path:
    dest = tmp_path / "k8s"
    shutil.copytree(K8S, dest)
    return dest


# --- reading the built objects ----------------------------------------------


def namespace_of(docs: list[dict]) -> str:
    return one(docs, "Namespace")["metadata"]["name"]


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod template) for every pod the overlay makes, Ray pods included."""
    pods = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pods.append((name, doc["spec"]["template"]))
        elif doc["kind"] == "RayCluster":
            spec = doc["spec"]
            pods.append((f"{name} head", spec["headGroupSpec"]["template"]))
            pods += [(f"{name} {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    return pods


def labels_of(template: dict) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


def service_pods(docs: list[dict]) -> dict[str, dict]:
    """component -> pod template of the six gRPC services."""
    found = {}
    for _, template in pod_templates(docs):
        component = labels_of(template).get(COMPONENT)
        if component in SERVICES:
            found[component] = template
    assert sorted(found) == sorted(SERVICES)
    return found


def ray_pods(docs: list[dict]) -> dict[str, dict]:
    cluster = one(docs, "RayCluster")
    return {where: t for where, t in pod_templates([cluster])}


def configmap_data(docs: list[dict], name: str) -> dict[str, str]:
    return one(docs, "ConfigMap", name).get("data") or {}


def container_env(docs: list[dict], container: dict) -> dict[str, Any]:
    """What a container's environment holds: ConfigMap keys, then env entries
    (a value, or its valueFrom mapping). Secret envFrom is listed by secret_env_from."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmap_data(docs, source["configMapRef"]["name"]))
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def secret_env_from(container: dict) -> set[str]:
    return {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}


def main_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def mount_for(template: dict, path: str) -> dict | None:
    """The volume mounted at `path` in the main container, or None."""
    container = main_container(template)
    names = [m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    if not names:
        return None
    return next(v for v in template["spec"]["volumes"] if v["name"] == names[0])


def quantity(value: Any) -> Fraction:
    """A Kubernetes resource quantity ("500m", "4", "8Gi", "1G") as a number."""
    text = str(value)
    suffixes = {
        "m": Fraction(1, 1000),
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    assert match and (match.group(2) in suffixes or not match.group(2)), f"bad quantity {text}"
    return Fraction(match.group(1)) * suffixes.get(match.group(2), 1)


# --- NetworkPolicy semantics --------------------------------------------------


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """A LabelSelector as Kubernetes applies it; {} (or absent) selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_admits(peer: dict, policy_ns: str, src: dict) -> bool:
    if "ipBlock" in peer:
        return False  # pod traffic is judged by selectors here
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_selector is None:
        if src["namespace"] != policy_ns:
            return False
    elif not selector_matches(ns_selector, {NS_NAME: src["namespace"]}):
        return False
    return pod_selector is None or selector_matches(pod_selector, src["labels"])


def _port_admits(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for item in ports:
        start = item.get("port")
        if start is None:
            return True
        if isinstance(start, int) and start <= port <= item.get("endPort", start):
            return True
    return False


def policies_selecting(docs: list[dict], labels: dict[str, str]) -> list[dict]:
    return [
        p
        for p in find(docs, "NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"].get("podSelector"), labels)
    ]


def ingress_allowed(docs: list[dict], target: dict[str, str], port: int, src: dict) -> bool:
    """Whether a pod labelled `target` in the overlay's namespace takes `port` from `src`
    ({"namespace", "labels"}): open when no policy selects it, else when one admits it."""
    namespace = namespace_of(docs)
    policies = policies_selecting(docs, target)
    if not policies:
        return True
    return any(
        _port_admits(rule, port)
        and ("from" not in rule or any(_peer_admits(peer, namespace, src) for peer in rule["from"]))
        for policy in policies
        for rule in policy["spec"].get("ingress") or []
    )


def common_template_labels(docs: list[dict]) -> dict[str, str]:
    """Labels (key and value) every pod template of the overlay carries: what its
    `labels`/commonLabels add, the labels an InferenceService made beside them may carry too."""
    label_sets = [labels_of(t).items() for _, t in pod_templates(docs)]
    common = set(label_sets[0])
    for items in label_sets[1:]:
        common &= set(items)
    return dict(common)


def predictor_label_sets(docs: list[dict], cluster: list[dict]) -> list[dict[str, str]]:
    """The labels a predictor pod of an InferenceService in this overlay's namespace
    can carry: what KServe and Knative put there, what KServe copies from the
    InferenceService (the serving backend's labels, the examples'), the runtime's
    pod labels and the overlay's common labels; once more with a component label
    of its own."""
    name = "support-student"
    settings = container_env(docs, main_container(service_pods(docs)["serving"]))
    labels: dict[str, str] = {}
    labels.update(common_template_labels(docs))
    for path in sorted((K8S / "examples").glob("*.yaml")):
        for doc in check.load_manifests(path.read_text()):
            labels.update(doc["metadata"].get("labels") or {})
            labels.update(doc["spec"]["predictor"].get("labels") or {})
    for runtime in find(cluster, "ClusterServingRuntime"):
        labels.update(runtime["spec"].get("labels") or {})
    # The serving service's kserve backend labels every InferenceService it makes.
    labels.update(
        {
            "app.kubernetes.io/part-of": "slmops",
            "slmops.io/deployment": name,
            "slmops.io/owner": settings.get("SLMOPS_KSERVE_OWNER", "slmops"),
        }
    )
    # KServe's own labels (both modes) and Knative's (Knative mode).
    labels.update(
        {
            "serving.kserve.io/inferenceservice": name,
            "component": "predictor",
            "app": f"isvc.{name}-predictor",
            "serving.knative.dev/service": f"{name}-predictor",
            "serving.knative.dev/configuration": f"{name}-predictor",
            "serving.knative.dev/revision": f"{name}-predictor-00001",
        }
    )
    return [labels, {**labels, COMPONENT: "predictor"}]


def predictor_cut_off(docs: list[dict], cluster: list[dict]) -> list[str]:
    """Why a predictor pod would not get traffic from Knative's activator and a gateway."""
    problems = []
    activator = {"namespace": KNATIVE_NAMESPACE, "labels": {"app": "activator"}}
    for labels in predictor_label_sets(docs, cluster):
        for port in PREDICTOR_PORTS:
            if not ingress_allowed(docs, labels, port, activator):
                problems.append(f"activator in {KNATIVE_NAMESPACE} -> predictor:{port} ({labels})")
            gateways = [{"namespace": ns, "labels": {"app": "gateway"}} for ns in GATEWAY_NAMESPACES]
            if not any(ingress_allowed(docs, labels, port, gw) for gw in gateways):
                problems.append(f"ingress gateway ({'/'.join(GATEWAY_NAMESPACES)}) -> predictor:{port}")
    return problems


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
    k8s = _copy_k8s(tmp_path)
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
    k8s = _copy_k8s(tmp_path)
    params = k8s / "overlays" / "dev" / "storage-parameters.yaml"
    text = params.read_text()
    placeholder = _dev_storage_parameter(k8s)
    params.write_text(text.replace(placeholder, "cephfs-rwx"))
    docs = check.kustomize_build(k8s / "overlays" / "dev")
    assert one(docs, "PersistentVolumeClaim", "slmops-artifacts")["spec"]["storageClassName"] == "cephfs-rwx"


# --- 4. the agreed settings ---------------------------------------------------


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


# --- 5. what jobs read is on the Ray pods too ---------------------------------


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
