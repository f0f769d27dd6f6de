"""What a deployment request may ask for: names, models, adapters, predictor limits, the backend, and the
evaluation gate.

Every check reports the field it concerns; validate() reports every problem of a
spec at once. For the local backend a model or adapter on an object store is
fetched into this machine's cache, checked against its manifest, and served
from there (core/artifact_cache.py); the records keep the model's own URI.

Validation reads manifests but does not hash: the files themselves are checked
against their manifest's hashes (`check_artifact_files`) right before they are
served, by the local backend before each start of a predictor and by the
serving service before it hands a revision to KServe.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from slmops.core import artifact_cache, artifacts, settings
from slmops.core.errors import Conflict, InvalidSpec, NotFound, collect
from slmops.core.spec_checks import check_labels, problems_from
from slmops.core.stores import filesystem, is_local, store_errors

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
QUANTITY_RE = re.compile(
    r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
)  # a Kubernetes memory quantity
SERVABLE_KINDS = ("onnx-model", "checkpoint")
BACKENDS = ("LOCAL", "KSERVE")


MAX_REQUEST_TIMEOUT_S = 600.0  # the router waits this long for an answer to begin (router.DEFAULT_TIMEOUT)


class LimitsFields(BaseModel):
    """DeploymentSpec.limits: each predictor's limits (`python -m slmops.predictor` flags); 0 keeps its default."""

    threads: int = Field(0, ge=0, le=1024)
    max_concurrency: int = Field(0, ge=0, le=1024)
    max_queue: int = Field(0, ge=0, le=100_000)
    max_tokens: int = Field(0, ge=0, le=1_048_576)
    max_body_bytes: int = Field(0, ge=0, le=256 << 20)
    request_timeout_s: float = Field(0.0, ge=0.0, le=MAX_REQUEST_TIMEOUT_S)

    @field_validator("max_body_bytes")
    @classmethod
    def _room_for_a_request(cls, value: int) -> int:
        if 0 < value < 1024:
            raise ValueError("must be 0 (the predictor's default) or at least 1024 bytes")
        return value


class DeploymentFields(BaseModel):
    """A deployment spec's own fields and their bounds; what depends on the backend, the
    configuration and the model's files is checked after (validate)."""

    name: str = Field("", validate_default=True)  # also the served model name
    canary_traffic_percent: int = Field(0, ge=0, le=100)  # a new deployment takes all traffic
    port: int = Field(0, ge=0, le=65535)  # local backend: the router's port; 0: a free one
    limits: LimitsFields = Field(default_factory=LimitsFields)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError("must be a DNS-1123 label: lowercase letters, digits and '-', at most 63")
        return name

    @field_validator("canary_traffic_percent")
    @classmethod
    def _no_canary_yet(cls, percent: int) -> int:
        if percent not in (0, 100):
            raise ValueError("a canary needs a deployment to run beside: create the deployment first, "
                             "then update it with a canary")  # fmt: skip
        return percent


def configured_backend() -> str:
    return settings.get("serving_backend").upper()


def resolve_model(uri: str, backend: str, field: str = "spec.model_uri") -> tuple[str, str]:
    """(confined URI, what the backend loads) for an artifact or a model folder."""
    full = artifacts.confine(uri, settings.allowed_roots(), field)
    if backend == "KSERVE":
        if full.startswith("file://"):
            return full, shared_claim_uri(uri, full, field)
        return full, full
    artifacts.open_input(full, field, verify=False)  # a remote artifact's hashes are checked as it is fetched
    if artifacts.is_artifact(full):
        kind = artifacts.read_manifest(full).kind
        if kind not in SERVABLE_KINDS:
            raise InvalidSpec(
                field, f"artifact kind {kind!r} cannot be served; one of {', '.join(SERVABLE_KINDS)}"
            )
    # A model on an object store is served from its checked copy in this machine's cache.
    path = artifact_cache.localize(full, field)
    if not path.exists():
        raise NotFound("model", uri)
    if not path.is_dir():
        raise InvalidSpec(field, f"{uri!r} is not a folder")
    if not (path / "genai_config.json").exists() and not (path / "config.json").exists():
        raise InvalidSpec(
            field, f"{uri!r} holds neither an ONNX Runtime GenAI model nor a Hugging Face checkpoint"
        )
    return full, full if is_local(full) else artifacts.to_uri(path)


def check_artifact_files(uri: str, field: str) -> None:
    """InvalidSpec naming each file of the sealed artifact `uri` lies in (or is) that is missing, extra
    or changed since it was sealed; a plain folder outside the artifact root has nothing to check."""
    artifacts.open_input(artifacts.to_uri(uri), field, verify=True)


def shared_claim_uri(uri: str, full: str, field: str) -> str:
    """pvc://<claim>/<path> for a file:// model on the shared claim (SLMOPS_SHARED_CLAIM at SLMOPS_SHARED_MOUNT_PATH)."""
    claim, mount = settings.get("shared_claim"), settings.get("shared_mount_path")
    if not claim or not mount:
        raise InvalidSpec(field, f"{uri!r} is on this machine; the kserve backend needs a URI the cluster's storage "
                                 "initializer can read (s3://, gs://, az://), or artifacts on a shared claim: set "
                                 "SLMOPS_SHARED_CLAIM and SLMOPS_SHARED_MOUNT_PATH")  # fmt: skip
    path, root = artifacts.local_path(full).resolve(), Path(mount).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InvalidSpec(field, f"{uri!r} is not under {root} (SLMOPS_SHARED_MOUNT_PATH, where the claim "
                                 f"{claim!r} is mounted); KServe can read only what is on the claim")  # fmt: skip
    if not path.exists():
        raise NotFound("model", uri)
    return f"pvc://{claim}/{path.relative_to(root).as_posix()}"


def check_resources(
    resources: dict[str, Any], backend: str, *, runtime_gpu: str | None = None
) -> list[tuple[str, str]]:
    """Problems with a deployment's resources: the kserve backend reserves them per predictor replica;
    the local backend cannot reserve any, so it refuses them rather than ignore them."""
    asked = {k: v for k, v in resources.items() if v not in (0, 0.0, "", None)}
    if not asked:
        return []
    if backend != "KSERVE":
        return [
            (
                "spec.resources",
                "the local backend runs predictors as processes on this machine and cannot "
                "reserve CPUs, memory or GPUs; leave resources empty, or use the kserve backend",
            )
        ]
    problems = []
    if int(asked.get("num_workers", 1)) != 1:
        problems.append(("spec.resources.num_workers", "a deployment's replicas are scaled by KServe's autoscaler; "
                                                       "leave num_workers 0 (or 1)"))  # fmt: skip
    cpus, gpus = float(asked.get("cpus_per_worker", 0)), float(asked.get("gpus_per_worker", 0))
    if cpus < 0:
        problems.append(("spec.resources.cpus_per_worker", "must not be negative"))
    if gpus < 0 or not gpus.is_integer():
        problems.append(("spec.resources.gpus_per_worker", "must be a whole number of GPUs (nvidia.com/gpu)"))
    elif gpus and not settings.get("kserve_runtime_gpu", runtime_gpu):
        problems.append(("spec.resources.gpus_per_worker", f"asks for {gpus:g} GPU(s), but this service has no GPU "
                                                           "runtime (SLMOPS_KSERVE_RUNTIME_GPU is empty)"))  # fmt: skip
    memory = str(asked.get("memory", ""))
    if memory and not QUANTITY_RE.match(memory):
        problems.append(
            ("spec.resources.memory", f"{memory!r} is not a Kubernetes quantity such as 4Gi or 512Mi")
        )
    return problems


def check_namespace(namespace: str, backend: str) -> list[tuple[str, str]]:
    """The kserve backend serves its configured namespace only (its RBAC is namespace-scoped)."""
    if not namespace:
        return []
    if backend != "KSERVE":
        return [("spec.namespace", "only the kserve backend has namespaces; leave it empty")]
    configured = settings.get("kserve_namespace")
    if namespace != configured:
        return [("spec.namespace", f"this serving service manages InferenceServices in namespace {configured!r} "
                                   f"only (SLMOPS_KSERVE_NAMESPACE; its RBAC is namespace-scoped), not {namespace!r}: "
                                   "leave it empty or deploy with the slmops release of that namespace")]  # fmt: skip
    return []


def resolve_adapters(adapters: list[dict[str, Any]], backend: str) -> list[list[str]]:
    """[[name, URI the predictor loads]] for the request's adapters; InvalidSpec naming each bad one."""
    problems: list[tuple[str, str]] = []
    resolved: list[list[str]] = []
    seen: set[str] = set()
    for i, adapter in enumerate(adapters):
        field = f"adapters[{i}]"
        name, uri = adapter.get("name", ""), adapter.get("uri", "")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
            problems.append((f"{field}.name", "letters, digits, '.', '_' and '-', at most 64"))
            continue
        if name in seen:
            problems.append((f"{field}.name", f"{name!r} is named twice"))
        seen.add(name)
        if backend == "KSERVE":
            problems.append((field, "the kserve backend serves the adapters converted into the model "
                                    "(slmops convert --adapter); they load from its adapters/ folder"))  # fmt: skip
            continue
        try:
            full = artifacts.confine(uri, settings.allowed_roots(), f"{field}.uri")
            artifacts.open_input(full, f"{field}.uri", verify=False)
            path = artifact_cache.localize(full, f"{field}.uri")  # a remote adapter: its checked local copy
            if not is_local(full):
                full = artifacts.to_uri(path)
            if path.is_dir():  # an artifact of converted adapters: the one named so, or the only one
                files = sorted(path.glob("**/*.onnx_adapter"))
                named = [f for f in files if f.stem == name] or files
                if len(named) == 1:
                    full = artifacts.to_uri(named[0])
                elif files:
                    raise InvalidSpec(f"{field}.uri", f"holds {len(files)} adapters; name the file")
            elif not path.exists():
                raise NotFound("adapter", uri)
            resolved.append([name, full])
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    collect(problems)
    return resolved


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    """Check a deployment spec (plain dict of the proto) and report every problem at once."""
    problems: list[tuple[str, str]] = []
    fields = None
    try:
        fields = DeploymentFields.model_validate(
            {k: spec[k] for k in DeploymentFields.model_fields if k in spec}
        )
    except ValidationError as exc:
        problems.extend(problems_from(exc, "spec"))
    backend = spec.get("backend", "SERVING_BACKEND_UNSPECIFIED")
    configured = configured_backend()
    if backend == "SERVING_BACKEND_UNSPECIFIED":
        backend = configured
    if backend != configured:
        problems.append(("spec.backend", f"this service runs the {configured} backend, not {backend}"))
    resources = dict(spec.get("resources") or {})
    problems += check_resources(resources, backend)
    problems += check_namespace(spec.get("namespace", ""), backend)
    problems += check_labels(spec.get("labels") or {})
    model_uri = storage_uri = ""
    adapters: list[list[str]] = []
    try:
        adapters = resolve_adapters(spec.get("adapters", []), backend)
    except InvalidSpec as exc:
        problems.extend((f"spec.{f}", p) for f, p in exc.problems)
    if not spec.get("model_uri"):
        problems.append(("spec.model_uri", "is required"))
    elif not problems:  # NotFound is reported on its own, once the spec is otherwise right
        try:
            model_uri, storage_uri = resolve_model(spec["model_uri"], backend)
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    collect(problems)
    assert fields is not None
    config = {"name": fields.name, "backend": backend, "port": fields.port, "model_uri": model_uri,
              "storage_uri": storage_uri, "adapters": adapters,
              "limits": {k: v for k, v in fields.limits.model_dump().items() if v}}  # fmt: skip
    if backend == "KSERVE":
        config["namespace"] = spec.get("namespace") or settings.get("kserve_namespace")
        config["resources"] = {"cpus": float(resources.get("cpus_per_worker", 0)),
                               "memory": str(resources.get("memory", "")),
                               "gpus": int(float(resources.get("gpus_per_worker", 0)))}  # fmt: skip
    return config


def check_gate(report_uri: str) -> list[str]:
    """The reasons a passing evaluation report gives; Conflict naming the failed checks otherwise."""
    full = artifacts.confine(report_uri, settings.allowed_roots(), "evaluation_report_uri")
    with store_errors(full, "reading the evaluation report"):
        fs, path = filesystem(full)
        report = f"{path.rstrip('/')}/report.json" if fs.isdir(path) else path
        if not fs.isfile(report):
            raise NotFound("evaluation report", report_uri)
        text = fs.cat_file(report).decode("utf-8", errors="replace")
    report = fs.unstrip_protocol(report)
    try:
        verdict = json.loads(text)["verdict"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidSpec("evaluation_report_uri", f"{report} is not an evaluation report ({exc})") from None
    if not verdict.get("evaluated"):
        raise Conflict(f"evaluation report {report_uri} has no gate verdict (no gate was configured); "
                       "a promotion that requires the gate needs one")  # fmt: skip
    reasons = [str(r) for r in verdict.get("reasons", [])]
    if not verdict.get("passed"):
        failed = [r for r in reasons if "FAILED" in r] or reasons
        raise Conflict(f"the evaluation gate failed ({report_uri}): " + "; ".join(failed))
    return reasons
