"""What the kustomize tests share: the overlays built once per test module,
and the built objects read as a cluster would read them. NetworkPolicies are
evaluated the way Kubernetes evaluates them (selectors, peers, ports) against
the pods the overlay makes and the pods KServe makes for an InferenceService;
the settings a container ends up with are merged from its ConfigMaps and env.
"""

from __future__ import annotations

import re
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

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


def build_overlays() -> dict[str, list[dict[str, Any]]]:
    """Each overlay and k8s/cluster, built with `kubectl kustomize`."""
    docs = {name: check.kustomize_build(K8S / "overlays" / name) for name in OVERLAYS}
    docs["cluster"] = check.kustomize_build(K8S / "cluster")
    return docs


def copy_k8s(tmp_path: Path) -> Path:
    """k8s/ copied under tmp_path, to be changed and built again."""
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
