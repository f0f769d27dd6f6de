"""Custom resources against the CRDs of the pinned KubeRay and KServe releases,
plus the rules their operators add beyond the schema.

Each CRD's structural schema becomes a JSON schema that refuses unknown fields,
as the API server's strict field validation does. Without the CRD files a kind
is checked by sdk_fallbacks (crd_schema_source says which).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import yaml

from chart_checks.kube import CRD_FILES, ROOT, describe, field_path, metadata_problems
from chart_checks.sdk_fallbacks import KSERVE_SDK_MODELS, kserve_sdk_problems, ray_required_field_problems

# The CRDs of the pinned operator releases, unmodified. They are not part of the
# repository: tests/fixtures/crds/README.md says where to get them and where to
# put them (there, or ../shared/crds). Without them the KServe kinds are checked
# against the kserve SDK's generated models and the Ray kinds by required-field
# checks (crd_schema_source says which).
CRDS = ROOT / "tests" / "fixtures" / "crds"
SHARED_CRDS = ROOT.parent / "shared" / "crds"
# Values of the serving.kserve.io/deploymentMode annotation KServe 0.16 acts on;
# RawDeployment and Serverless are its deprecated names for Standard and Knative
# (kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go, GetDeploymentMode).
KSERVE_DEPLOYMENT_MODES = {"Standard", "Knative", "ModelMesh", "RawDeployment", "Serverless"}
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"


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


def _schema_error_problems(error: Any, where: str) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set((error.schema or {}).get("properties") or {})
        return [
            f"{where}: {field_path([*path, name])}: unknown field (not in the CRD schema)"
            for name in sorted(set(error.instance) - known)
        ]
    return [f"{where}: {field_path(path)}: {error.message}"]


def crd_schema_problems(doc: dict[str, Any]) -> list[str]:
    """Problems of a custom resource against the CRD of its kind (or, without
    the CRD file, against what crd_schema_source names).

    Each is "Kind/name: path.to.field: message": an apiVersion the CRD does
    not serve (or not the one the project writes), an unknown field, a wrong
    type, a missing required field, a value outside an enum, bad metadata.
    """
    kind, where = doc.get("kind"), describe(doc)
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
    return problems + metadata_problems(doc, where)


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
    spec, where = doc.get("spec"), describe(doc)
    if isinstance(spec, dict) and doc.get("kind") == "RayCluster":
        problems += _ray_cluster_rules(spec, where)
    elif doc.get("kind") == "InferenceService":
        problems += _inference_service_rules(doc, where)
    return problems
