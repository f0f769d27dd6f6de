"""The profiles the chart contract tests render (the values an install is made
of), and how those tests read the rendered objects and the values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit._charts import SERVICES, check, find, one

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


def write_gpu_values(folder: Path) -> Path:
    """The values file of the "gpu" profile (GPU_GROUPS), written under folder."""
    path = folder / "gpu.yaml"
    path.write_text(yaml.safe_dump(GPU_GROUPS))
    return path


def render_profile(
    profile: str, gpu_values: Path, *more: str, release: str = "slmops", namespace: str = "slmops"
) -> list[dict[str, Any]]:
    """A profile rendered (gpu_values: the file write_gpu_values wrote), with more --set values."""
    files, sets = PROFILES[profile]
    files = [gpu_values if f == "<gpu>" else Path(f) for f in files]
    return check.helm_template(files, [*sets, *more], release=release, namespace=namespace)


def service_pods(docs: list[dict]) -> dict[str, dict]:
    """service name -> pod spec, for the enabled services."""
    return {
        svc: d["spec"]["template"]["spec"]
        for svc in SERVICES
        for d in find(docs, "Deployment", f"slmops-{svc}")
    }


def ray_groups(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(group name, group spec, pod template) for the head and every worker group."""
    spec = one(docs, "RayCluster", "slmops-ray")["spec"]
    groups = [("head", spec["headGroupSpec"], spec["headGroupSpec"]["template"])]
    groups += [(g["groupName"], g, g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return groups


def env_from_secrets(container: dict) -> list[str]:
    return [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]


def profile_values(profile: str, gpu_values: Path) -> dict[str, Any]:
    """The values a profile sets on top of the chart's defaults (enough for the checks here)."""
    files, sets = PROFILES[profile]
    merged: dict[str, Any] = yaml.safe_load((check.CHART / "values.yaml").read_text())
    for f in files:
        path = gpu_values if f == "<gpu>" else Path(f)
        merge_values(merged, yaml.safe_load(path.read_text()))
    return apply_sets(merged, sets)


def merge_values(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_values(into[key], value)
        else:
            into[key] = value


def apply_sets(into: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """into with each `--set key.path=value` written into it, the value kept a string."""
    for item in sets:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = into
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return into


def quantity_bytes(quantity: Any) -> int:
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


def quantity_cpus(quantity: Any) -> float:
    text = str(quantity or 0)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
