"""Custom resources checked without the CRD files: the KServe kinds against
the kserve SDK's generated models, the Ray kinds by their required fields.

The CRD files of the pinned operator releases are not in the repository
(tests/fixtures/crds/README.md); crds.crd_schema_source says which check a
kind gets.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

from chart_checks.kube import CRD_FILES, describe, field_path, metadata_problems, schema_problems

# kind -> the kserve SDK model of the apiVersion the project writes (CRD_FILES).
KSERVE_SDK_MODELS = {
    "InferenceService": "V1beta1InferenceService",
    "ServingRuntime": "V1alpha1ServingRuntime",
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
}
# Type names the models of kserve 0.21.0 use but do not define as JSON objects,
# and what they are in JSON: Go's resource.Quantity and metav1.Time, knative's
# apis.URL and VolatileTime, and two Kubernetes types under their Go package names.
KSERVE_SDK_TYPE_ALIASES = {
    "ResourceQuantity": "quantity",
    "V1beta1MetricQuantity": "quantity",
    "V1Time": "datetime",
    "KnativeVolatileTime": "datetime",
    "KnativeURL": "str",
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
}
# Fields the Kubernetes client types as strings that are resource.Quantity in
# the API, which takes a number or a string: (model, JSON field) -> type.
KSERVE_SDK_FIELD_TYPES = {
    ("V1ResourceRequirements", "limits"): "dict(str, quantity)",
    ("V1ResourceRequirements", "requests"): "dict(str, quantity)",
    ("V1VolumeResourceRequirements", "limits"): "dict(str, quantity)",
    ("V1VolumeResourceRequirements", "requests"): "dict(str, quantity)",
    ("V1PodSpec", "overhead"): "dict(str, quantity)",
    ("V1EmptyDirVolumeSource", "sizeLimit"): "quantity",
    ("V1ResourceFieldSelector", "divisor"): "quantity",
}
# SDK type name -> (JSON type names of jsonschema's messages, the Python types a value may have)
_SDK_PRIMITIVES: dict[str, tuple[str, tuple[type, ...]]] = {
    "str": ("string", (str,)),
    "datetime": ("string", (str,)),
    "date": ("string", (str,)),
    "int": ("integer", (int,)),
    "float": ("number", (int, float)),
    "bool": ("boolean", (bool,)),
    "quantity": ("integer or string", (str, int)),
}


@functools.cache
def _kserve_modules() -> tuple[Any, Any]:
    """kserve.models and kubernetes.client.models. kserve's model_server parses
    sys.argv when imported, so the import sees no arguments."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve.models
        import kubernetes.client.models
    finally:
        sys.argv = argv
    return kserve.models, kubernetes.client.models


@functools.cache
def kserve_sdk_model(name: str) -> dict[str, str] | None:
    """The fields of one model of the kserve SDK (or of the Kubernetes client it
    refers to): JSON field name -> SDK type string; None when the SDK does not
    define the type."""
    import importlib

    kserve_models, k8s_models = _kserve_modules()
    cls = getattr(k8s_models, name, None) or getattr(kserve_models, name, None)
    if cls is None:  # a few kserve models are not exported by kserve.models
        module = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
        try:
            cls = getattr(importlib.import_module(f"kserve.models.{module}"), name, None)
        except ImportError:
            cls = None
    if cls is None or not hasattr(cls, "openapi_types"):
        return None
    fields = {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}
    return {key: KSERVE_SDK_FIELD_TYPES.get((name, key), kind) for key, kind in fields.items()}


def _sdk_container(sdk_type: str) -> tuple[str, str] | None:
    """("list", item type) or ("dict", value type) for a container type string."""
    if match := re.fullmatch(r"(?:list|List)\[(.*)\]", sdk_type):
        return "list", match[1].strip()
    if match := re.fullmatch(r"dict\(\s*str\s*,(.*)\)|Dict\[\s*str\s*,(.*)\]", sdk_type):
        return "dict", (match[1] or match[2]).strip()
    return None


def _sdk_type_problems(value: Any, sdk_type: str, path: list[Any], where: str) -> list[str]:
    sdk_type = KSERVE_SDK_TYPE_ALIASES.get(sdk_type.strip(), sdk_type.strip())
    if sdk_type == "object":
        return []
    container = _sdk_container(sdk_type)
    if sdk_type in _SDK_PRIMITIVES:
        json_type, types = _SDK_PRIMITIVES[sdk_type]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            return [f"{where}: {field_path(path)}: {value!r} is not of type {json_type!r}"]
        return []
    if container and container[0] == "list":
        if not isinstance(value, list):
            return [f"{where}: {field_path(path)}: {value!r} is not of type 'array'"]
        items = enumerate(value)
        return [p for i, item in items for p in _sdk_type_problems(item, container[1], [*path, i], where)]
    if container:
        if not isinstance(value, dict):
            return [f"{where}: {field_path(path)}: {value!r} is not of type 'object'"]
        return [p for k, v in value.items() for p in _sdk_type_problems(v, container[1], [*path, k], where)]
    fields = kserve_sdk_model(sdk_type)
    if fields is None:
        return []  # a type the SDK does not define (kserve_sdk_undefined_types): not checked
    if not isinstance(value, dict):
        return [f"{where}: {field_path(path)}: {value!r} is not of type 'object'"]
    problems = []
    for key in sorted(value, key=str):
        if key not in fields:
            at = field_path([*path, key])
            problems.append(f"{where}: {at}: unknown field (not in the kserve SDK's {sdk_type})")
        else:
            problems += _sdk_type_problems(value[key], fields[key], [*path, key], where)
    return problems


def kserve_sdk_undefined_types() -> set[str]:
    """The type names reachable from KSERVE_SDK_MODELS that the SDK does not
    define; values of those types are not checked."""
    undefined: set[str] = set()
    seen: set[str] = set()
    todo = list(KSERVE_SDK_MODELS.values())
    while todo:
        name = todo.pop().strip()
        name = KSERVE_SDK_TYPE_ALIASES.get(name, name)
        container = _sdk_container(name)
        if container:
            todo.append(container[1])
        elif name not in seen and name not in _SDK_PRIMITIVES and name != "object":
            seen.add(name)
            fields = kserve_sdk_model(name)
            if fields is None:
                undefined.add(name)
            else:
                todo += fields.values()
    return undefined


def kserve_sdk_problems(doc: dict[str, Any]) -> list[str]:
    """Problems of an InferenceService or (Cluster)ServingRuntime against the
    kserve SDK's model of its kind: "Kind/name: path.to.field: message" for an
    apiVersion other than the one the project writes, an unknown field, a
    value of the wrong type (null included), bad metadata. Strict like the
    API server's field validation; the SDK knows no enums nor required fields."""
    kind, where = doc.get("kind"), describe(doc)
    model, expected = KSERVE_SDK_MODELS[kind], CRD_FILES[kind][1]
    if doc.get("apiVersion") != expected:
        api_version = doc.get("apiVersion")
        return [f"{where}: apiVersion: {api_version!r} is not {expected} (the kserve SDK's {model})"]
    body = {key: value for key, value in doc.items() if key != "metadata"}  # metadata: metadata_problems
    return _sdk_type_problems(body, model, [], where) + metadata_problems(doc, where)


def _pod_template_problems(template: Any, where: str) -> list[str]:
    """A pod template embedded in a Ray resource, validated as a v1 PodTemplate's."""
    if not isinstance(template, dict) or not (template.get("spec") or {}).get("containers"):
        return [f"{where}: needs a pod template with spec.containers"]
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"}}
    wrapped["template"] = template
    return [f"{where}: {p}" for p in schema_problems(wrapped)]


def _ray_cluster_spec_problems(spec: Any, where: str, at: str) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: {at}: {spec!r} is not of type 'object'"]
    problems = []
    if not isinstance(spec.get("rayVersion"), str):
        problems.append(f"{where}: {at}.rayVersion: must be a string")
    if not isinstance(spec.get("headGroupSpec"), dict):
        return [*problems, f"{where}: {at}.headGroupSpec: is required"]
    workers = spec.get("workerGroupSpecs") or []
    if not isinstance(workers, list):
        return [*problems, f"{where}: {at}.workerGroupSpecs: {workers!r} is not of type 'array'"]
    groups = [(f"{at}.headGroupSpec", spec["headGroupSpec"])]
    groups += [(f"{at}.workerGroupSpecs[{i}]", g) for i, g in enumerate(workers) if isinstance(g, dict)]
    for label, group in groups:
        params = group.get("rayStartParams", {})
        if not isinstance(params, dict):
            problems.append(f"{where}: {label}.rayStartParams: {params!r} is not of type 'object'")
        else:
            problems += [
                f"{where}: {label}.rayStartParams.{key}: {value!r} is not of type 'string'"
                for key, value in params.items()
                if not isinstance(value, str)
            ]
        problems += _pod_template_problems(group.get("template"), f"{where}: {label}.template")
    for label, group in groups[1:]:
        if not isinstance(group.get("groupName"), str) or not group.get("groupName"):
            problems.append(f"{where}: {label}.groupName: is required")
        for key in ("replicas", "minReplicas", "maxReplicas"):
            value = group.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{where}: {label}.{key}: {value!r} is not of type 'integer'")
    return problems


def ray_required_field_problems(doc: dict[str, Any]) -> list[str]:
    """A RayCluster's or RayJob's required fields and their types, when the
    KubeRay CRD files are absent: apiVersion ray.io/v1, rayVersion, a head
    group, named worker groups, rayStartParams as strings, integer replica
    counts, the pod templates as v1 PodTemplates, metadata."""
    kind, where = doc.get("kind"), describe(doc)
    expected = CRD_FILES[kind][1]
    problems = []
    if doc.get("apiVersion") != expected:
        problems.append(f"{where}: apiVersion: {doc.get('apiVersion')!r} is not {expected}")
    spec = doc.get("spec")
    if kind == "RayCluster":
        problems += _ray_cluster_spec_problems(spec, where, "spec")
    elif not isinstance(spec, dict):
        problems.append(f"{where}: spec: is required")
    else:
        if "entrypoint" in spec and not isinstance(spec["entrypoint"], str):
            problems.append(f"{where}: spec.entrypoint: {spec['entrypoint']!r} is not of type 'string'")
        if "rayClusterSpec" in spec:
            problems += _ray_cluster_spec_problems(spec["rayClusterSpec"], where, "spec.rayClusterSpec")
        elif not spec.get("clusterSelector"):
            problems.append(f"{where}: spec: needs rayClusterSpec or clusterSelector")
    return problems + metadata_problems(doc, where)
