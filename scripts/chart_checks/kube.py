"""What every manifest check shares: the Kubernetes version the manifests are
checked for, how an object and a field are named in a problem, the API's own
schemas (kubernetes-validate, strict: unknown fields fail), and the custom
resource kinds the project writes with their apiVersions.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.32.0"  # the kubectl on the build machines; the chart needs >= 1.27
# kind -> (CRD file under crds.CRDS, the apiVersion the project writes)
CRD_FILES = {
    "RayCluster": ("kuberay/ray.io_rayclusters.yaml", "ray.io/v1"),
    "RayJob": ("kuberay/ray.io_rayjobs.yaml", "ray.io/v1"),
    "InferenceService": (
        "kserve/serving.kserve.io_inferenceservices.yaml",
        "serving.kserve.io/v1beta1",
    ),
    "ServingRuntime": ("kserve/serving.kserve.io_servingruntimes.yaml", "serving.kserve.io/v1alpha1"),
    "ClusterServingRuntime": (
        "kserve/serving.kserve.io_clusterservingruntimes.yaml",
        "serving.kserve.io/v1alpha1",
    ),
}
CRD_KINDS = set(CRD_FILES)


def describe(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


def field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def schema_problems(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{describe(doc)}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{describe(doc)}: {exc.message}"]
    return []


def metadata_problems(doc: dict[str, Any], where: str) -> list[str]:
    """A custom resource's metadata is an ObjectMeta: checked as a ConfigMap's."""
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not (metadata.get("name") or metadata.get("generateName")):
        return [f"{where}: metadata.name is required"]
    wrapped = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    return [p.replace("ConfigMap/", f"{doc.get('kind')}/", 1) for p in schema_problems(wrapped)]
