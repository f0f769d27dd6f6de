"""The kserve serving backend: one InferenceService per deployment.

The manifest is built with the `kserve` SDK's models and applied through the
official Kubernetes client's CustomObjectsApi, in the shape of
k8s/examples/inferenceservice-onnx.yaml: model format `onnx-genai` served by
the project's runtime (SLMOPS_KSERVE_RUNTIME; SLMOPS_KSERVE_RUNTIME_GPU when
the deployment asks for GPUs). The deployment's predictor limits are the
predictor's `args`: KServe appends them to the runtime's arguments, so they win.

Deployment mode (SLMOPS_KSERVE_DEPLOYMENT_MODE, the annotation
`serving.kserve.io/deploymentMode`): `Standard` (plain Deployments; a new
revision replaces the old one) or `Knative`, where traffic uses KServe's own
canary: a new revision patches the predictor's storageUri and sets
`canaryTrafficPercent`; KServe gives the latest revision that share and the
last rolled-out revision the rest. Promote removes the field (all to the
latest), rollback sets it to 0 (all to the previous one), or after a
promotion applies the previous revision's storageUri again. Tag routing
(`serving.kserve.io/enable-tag-routing`) gives each of the two its own URL, so
an evaluation measures one revision, never the mix.

Ownership: every InferenceService created carries `slmops.io/owner:
<SLMOPS_KSERVE_OWNER>` and `app.kubernetes.io/managed-by: slmops`. Every
patch and delete reads the object first: one without that owner is never
patched or deleted (ALREADY_EXISTS when a deployment would take its name,
FAILED_PRECONDITION otherwise), and the patch or delete names the uid that was
read, so an object replaced in between is refused by the API server too.

gRPC: the predictor serves OIP v2 gRPC on port 8081 beside HTTP on 8080. In
Standard mode the InferenceService declares both container ports (`http1`
8080 first, then `h2c` 8081, the name KServe and Knative give cleartext
HTTP/2), so KServe's Service `<name>-predictor` carries the gRPC port too and
the deployment's `grpc_address` is `<name>-predictor.<namespace>.svc.cluster.local:8081`
(kserve_status.py). Knative routes a single port per container (HTTP): there a
deployment has no gRPC address.

Visibility: InferenceServices are `networking.kserve.io/visibility:
cluster-local` (no external URL) unless SLMOPS_KSERVE_EXPOSE_EXTERNALLY is
true; the chart's NetworkPolicy limits who reaches the predictors inside the
cluster, and they require the predictor API key. Every revision's model stays on the
InferenceService as annotations (kserve_status.py), so a rollback works from
the cluster alone, after a restart with an empty data folder too.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kserve.api_client import ApiClient as _KServeSerializer
from kserve.models import (
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
)
from kubernetes import client as k8s

from slmops.core import settings
from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound, Unavailable
from slmops.serving.backends import BackendStatus, PredictorLimits, Revision
from slmops.serving.backends.kserve_api import api_error, default_api_client, why
from slmops.serving.backends.kserve_status import (
    MODE_ANNOTATION,
    PREDICTOR_GRPC_PORT,
    PREDICTOR_HTTP_PORT,
    REVISION_ANNOTATION,
    ROLLED_OUT_ANNOTATION,
    ROLLED_OUT_HISTORY_ANNOTATION,
    history,
    pruned,
    revision_annotations,
    status_of,
)

__all__ = ["KServeBackend", "status_of", "GROUP", "VERSION", "PLURAL"]

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
MODEL_FORMAT, MODEL_FORMAT_VERSION = "onnx-genai", "1"
MODEL_URI_ANNOTATION = "serving.slmops.io/model-uri"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
OWNER_LABEL, MANAGED_BY_LABEL = "slmops.io/owner", "app.kubernetes.io/managed-by"
VISIBILITY_LABEL, CLUSTER_LOCAL = "networking.kserve.io/visibility", "cluster-local"
MODES = ("Standard", "Knative")
MANIFEST_FILE = "inferenceservice.yaml"
# KServe appends "-predictor" and Knative "-00001" and a tag ("latest-"): keep names well under 63.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$")
# The predictor's ports (the runtime runs it with --http-port=8080 --grpc-port=8081), HTTP first:
# KServe's Service maps port 80 to the first and keeps the others' numbers.
_PORTS = [k8s.V1ContainerPort(name="http1", container_port=PREDICTOR_HTTP_PORT, protocol="TCP"),
          k8s.V1ContainerPort(name="h2c", container_port=PREDICTOR_GRPC_PORT, protocol="TCP")]  # fmt: skip
_DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}


class KServeBackend:
    """Deployments as InferenceServices in one namespace."""

    def __init__(
        self,
        api_client: k8s.ApiClient | None = None,
        *,
        namespace: str | None = None,
        runtime: str | None = None,
        runtime_gpu: str | None = None,
        service_account: str | None = None,
        deployment_mode: str | None = None,
        owner: str | None = None,
        request_timeout_s: float = 10.0,
        min_replicas: int = 1,
        max_replicas: int = 3,
        expose_externally: bool | None = None,
    ):
        self.namespace = settings.get("kserve_namespace", namespace)
        self.runtime = settings.get("kserve_runtime", runtime)
        self.runtime_gpu = settings.get("kserve_runtime_gpu", runtime_gpu)
        self.service_account = settings.get("kserve_service_account", service_account)
        self.deployment_mode = _mode(settings.get("kserve_deployment_mode", deployment_mode))
        self.owner = settings.get("kserve_owner", owner)
        if expose_externally is None:
            flag = settings.get("kserve_expose_externally").strip().lower()
            expose_externally = flag in ("1", "true", "yes")
        self.expose_externally = expose_externally
        self.request_timeout_s = request_timeout_s
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self._api_client = api_client
        self._api: k8s.CustomObjectsApi | None = None

    # -- checks ---------------------------------------------------------------

    def check_traffic(self, percent: int, field: str = "canary_traffic_percent") -> None:
        """A split (0 < percent < 100) needs Knative mode; InvalidSpec naming `field` otherwise."""
        if 0 < percent < 100 and self.deployment_mode != "Knative":
            raise InvalidSpec(field, f"a canary ({percent}%) needs KServe's Knative deployment mode; this service "
                                     f"creates InferenceServices in {self.deployment_mode} mode, where a new revision "
                                     "replaces the old one (deploy with 0 or 100, or set "
                                     "SLMOPS_KSERVE_DEPLOYMENT_MODE=Knative)")  # fmt: skip

    def check_owner(self, name: str) -> None:
        """AlreadyExists when an InferenceService of this name exists and is not this service's."""
        self._owned(name, self._get(name, missing_ok=True), "take over", creating=True)

    # -- the manifest ---------------------------------------------------------

    def build(self, name: str, revision: Revision) -> dict[str, Any]:
        """The InferenceService serving `revision`, as the plain dict that is applied."""
        _check(name, revision)
        self.check_traffic(revision.traffic_percent, "traffic_percent")
        runtime = self.runtime
        if revision.gpus:
            if not self.runtime_gpu:
                raise InvalidSpec("resources.gpus_per_worker", f"asks for {revision.gpus} GPU(s), but this service "
                                                               "has no GPU runtime (SLMOPS_KSERVE_RUNTIME_GPU is empty)")  # fmt: skip
            runtime = self.runtime_gpu
        model = V1beta1ModelSpec(
            model_format=V1beta1ModelFormat(name=MODEL_FORMAT, version=MODEL_FORMAT_VERSION),
            runtime=runtime,
            storage_uri=revision.storage_uri,
            resources=k8s.V1ResourceRequirements(**_resources(revision)),
            ports=None if self.deployment_mode == "Knative" else _PORTS,  # Knative: one port, HTTP
            args=revision.limits.flags() or None,  # after the runtime's own arguments: these win
        )
        knative = self.deployment_mode == "Knative"
        predictor = V1beta1PredictorSpec(
            model=model,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            # Knative's autoscaler scales on requests in flight; Standard mode's HPA on CPU.
            scale_metric="concurrency" if knative else "cpu",
            scale_target=4 if knative else 80,
            service_account_name=self.service_account or None,
            canary_traffic_percent=revision.traffic_percent if revision.traffic_percent < 100 else None,
        )
        annotations = {
            MODE_ANNOTATION: self.deployment_mode,
            "serving.kserve.io/enable-prometheus-scraping": "true",
            REVISION_ANNOTATION: str(revision.number),
            MODEL_URI_ANNOTATION: revision.model_uri,
            **revision_annotations(revision.number, revision.model_uri, revision.storage_uri, _now()),
        }
        if knative:
            annotations[TAG_ROUTING_ANNOTATION] = "true"  # "latest-" and "prev-" URLs per revision
        isvc = V1beta1InferenceService(
            api_version=API_VERSION,
            kind="InferenceService",
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels={
                    "app.kubernetes.io/part-of": "slmops",
                    MANAGED_BY_LABEL: "slmops",
                    OWNER_LABEL: self.owner,
                    "slmops.io/deployment": name,
                    **({} if self.expose_externally else {VISIBILITY_LABEL: CLUSTER_LOCAL}),
                },  # fmt: skip
                annotations=annotations,
            ),
            spec=V1beta1InferenceServiceSpec(predictor=predictor),
        )
        body = _KServeSerializer().sanitize_for_serialization(isvc)
        if not body["spec"]["predictor"]["model"].get("name"):
            body["spec"]["predictor"]["model"].pop("name", None)  # the SDK's default ''
        return body

    # -- operations -----------------------------------------------------------

    def apply(self, name: str, revision: Revision, record_dir: Path | None = None) -> dict[str, Any]:
        """Create the InferenceService, or roll `revision` out on the existing one (only if it is ours).

        On an existing one the predictor's storageUri changes and, below 100
        percent, canaryTrafficPercent starts a canary next to the last rolled-out
        revision; at 100 the new revision replaces it.
        """
        body = self.build(name, revision)
        annotations = body["metadata"]["annotations"]
        current = self._owned(name, self._get(name, missing_ok=True), "patch", creating=True)
        old = (current or {}).get("metadata", {}).get("annotations") or {}
        _, rollouts = history(old)
        if revision.traffic_percent >= 100:
            annotations[ROLLED_OUT_ANNOTATION] = str(revision.number)
            if (
                revision.number in rollouts
            ):  # an earlier revision again: a rollback, the later ones leave the history
                rollouts = rollouts[: len(rollouts) - rollouts[::-1].index(revision.number)]
            else:
                rollouts = [*rollouts, revision.number][-50:]
        else:
            annotations[ROLLED_OUT_ANNOTATION] = old.get(ROLLED_OUT_ANNOTATION) or old.get(
                REVISION_ANNOTATION, ""
            )
        annotations[ROLLED_OUT_HISTORY_ANNOTATION] = ",".join(map(str, rollouts))
        if current is None:
            self._call(
                "create", name, self._objects().create_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, body,
            )  # fmt: skip
            _write(record_dir, body)
            return body
        # The whole desired predictor; None removes canaryTrafficPercent (a merge patch drops null keys).
        predictor = {**body["spec"]["predictor"]}
        predictor["canaryTrafficPercent"] = predictor.get("canaryTrafficPercent")
        predictor["model"] = {**predictor["model"], "args": predictor["model"].get("args")}  # none: removed
        changes: dict[str, Any] = {**annotations, **pruned({**old, **annotations})}
        labels = {**body["metadata"]["labels"]}
        if self.expose_externally:
            labels[VISIBILITY_LABEL] = None  # a merge patch drops it: the object gets its external URL back
        patch = {"metadata": {"labels": labels, "annotations": changes}, "spec": {"predictor": predictor}}
        self._patch(name, patch, record_dir, current)
        return body

    def set_traffic(self, name: str, percent: int, record_dir: Path | None = None) -> None:
        """Give the latest revision `percent` of the traffic, the last rolled-out one the rest."""
        if not 0 <= percent <= 100:
            raise InvalidSpec("traffic_percent", f"must be between 0 and 100, not {percent}")
        current = self._owned(name, self._get(name), "patch")
        if percent == 0 and self.deployment_mode != "Knative":
            raise InvalidSpec(
                "traffic_percent", f"{self.deployment_mode} mode has no canary to take traffic from"
            )
        self.check_traffic(percent, "traffic_percent")
        patch: dict[str, Any] = {
            "spec": {"predictor": {"canaryTrafficPercent": percent if percent < 100 else None}}
        }
        if percent == 100:
            annotations = current.get("metadata", {}).get("annotations") or {}
            latest = annotations.get(REVISION_ANNOTATION)
            if latest and annotations.get(ROLLED_OUT_ANNOTATION) != latest:
                _, rollouts = history(annotations)
                patch["metadata"] = {"annotations": {
                    ROLLED_OUT_ANNOTATION: latest,
                    ROLLED_OUT_HISTORY_ANNOTATION: ",".join(map(str, [*rollouts, int(latest)][-50:])),
                }}  # fmt: skip
        self._patch(name, patch, record_dir, current)

    def promote(self, name: str, record_dir: Path | None = None) -> None:
        """All traffic to the latest revision: canaryTrafficPercent removed."""
        self.set_traffic(name, 100, record_dir)

    def rollback(self, name: str, record_dir: Path | None = None) -> None:
        """All traffic back to the previous revision, from what the InferenceService itself records.

        While a canary runs: canaryTrafficPercent 0. After a promotion: the
        revision rolled out before the current one is applied again, its model
        read from the annotations (nothing on this machine is needed).
        """
        current = self._owned(name, self._get(name), "patch")
        annotations = current.get("metadata", {}).get("annotations") or {}
        latest, rolled_out = annotations.get(REVISION_ANNOTATION), annotations.get(ROLLED_OUT_ANNOTATION)
        canary = (current.get("spec", {}).get("predictor") or {}).get("canaryTrafficPercent")
        if latest != rolled_out and canary is not None and canary < 100:
            self.set_traffic(name, 0, record_dir)
            return
        recorded, rollouts = history(annotations)
        while rollouts and str(rollouts[-1]) == latest:
            rollouts.pop()
        if not rollouts or rollouts[-1] not in recorded:
            raise Conflict(
                f"InferenceService {self.namespace}/{name} records no earlier revision to roll back to"
            )
        previous = recorded[rollouts[-1]]
        revision = Revision(previous.number, previous.model_uri, previous.storage_uri, 100,
                            **_revision_resources(current))  # fmt: skip
        body = self.build(name, revision)
        body["metadata"]["annotations"].update({
            ROLLED_OUT_ANNOTATION: str(previous.number),
            ROLLED_OUT_HISTORY_ANNOTATION: ",".join(map(str, rollouts)),
            **revision_annotations(previous.number, previous.model_uri, previous.storage_uri, previous.time),
        })  # fmt: skip
        predictor = {**body["spec"]["predictor"], "canaryTrafficPercent": None}
        self._patch(name, {"metadata": {"annotations": body["metadata"]["annotations"]},
                           "spec": {"predictor": predictor}}, record_dir, current)  # fmt: skip

    def delete(self, name: str) -> None:
        """Delete the InferenceService, only if it is ours (and still the object that was checked)."""
        current = self._owned(name, self._get(name), "delete")
        uid = current.get("metadata", {}).get("uid")
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid)) if uid else None
        self._call(
            "delete", name, self._objects().delete_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, **({"body": options} if options else {}),
        )  # fmt: skip

    def status(self, name: str) -> BackendStatus:
        return status_of(self._owned(name, self._get(name), "read the state of"))

    def failed_note(self, name: str) -> str:
        """What a deployment whose first revision failed says: the InferenceService stays to be inspected."""
        return (f"the InferenceService {self.namespace}/{name} was left in place for inspection "
                f"(kubectl -n {self.namespace} describe inferenceservice {name}); delete the deployment to remove it")  # fmt: skip

    def restore(self, name: str, revisions: list[Revision], runtime: dict[int, dict[str, Any]],
                serving: int, latest: int, percent: int) -> None:  # fmt: skip
        """Nothing to take over: the InferenceService itself is the state, in the cluster (its owner checked)."""
        self._owned(name, self._get(name, missing_ok=True), "take over")

    # -- the Kubernetes API ---------------------------------------------------

    def _owned(
        self, name: str, obj: dict[str, Any] | None, what: str, creating: bool = False
    ) -> dict[str, Any] | None:
        """`obj` when it is this service's (or None). When it is not: AlreadyExists where a deployment
        would take the name (`creating`), Conflict (FAILED_PRECONDITION) otherwise."""
        if obj is None:
            return None
        labels = obj.get("metadata", {}).get("labels") or {}
        if labels.get(OWNER_LABEL) != self.owner:
            theirs = repr(labels[OWNER_LABEL]) if labels.get(OWNER_LABEL) else "none"
            message = (f"an InferenceService named {name} exists and is not managed by this slmops (label "
                       f"{OWNER_LABEL}: {theirs}, this slmops: {self.owner!r}; namespace {self.namespace}); "
                       f"refusing to {what} it: deploy under another name, or remove it yourself")  # fmt: skip
            raise (AlreadyExists if creating else Conflict)(message)
        return obj

    def _objects(self) -> k8s.CustomObjectsApi:
        if self._api is None:
            self._api = k8s.CustomObjectsApi(self._api_client or default_api_client())
        return self._api

    def _get(self, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            return self._call(
                "read", name, self._objects().get_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, name,
            )  # fmt: skip
        except NotFound:
            if missing_ok:
                return None
            raise

    def _patch(
        self, name: str, patch: dict[str, Any], record_dir: Path | None, current: dict[str, Any]
    ) -> None:
        """A merge patch of the object `current` (read and checked just before): its uid rides along, so
        the API server refuses the patch if the name now belongs to another object."""
        uid = current.get("metadata", {}).get("uid")
        if uid:
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "uid": uid}}
        result = self._call(
            "patch", name, self._objects().patch_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, patch,
        )  # fmt: skip
        if record_dir is not None and isinstance(result, dict):
            _write(record_dir, _reappliable(result))

    def _call(self, what: str, name: str, fn, *args: Any, **kwargs: Any) -> Any:
        """One API call; its failures as the platform's errors."""
        try:
            return fn(*args, _request_timeout=self.request_timeout_s, **kwargs)
        except k8s.ApiException as e:
            raise api_error(e, what, self.namespace, name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            host = self._objects().api_client.configuration.host
            raise Unavailable(
                f"Kubernetes API server at {host} cannot be reached ({why(e, self.request_timeout_s)}) "
                f"while trying to {what} InferenceService {self.namespace}/{name}; "
                "check the kubeconfig or the in-cluster service account"
            ) from e


def _mode(value: str) -> str:
    aliases = {
        "standard": "Standard",
        "rawdeployment": "Standard",
        "knative": "Knative",
        "serverless": "Knative",
    }
    mode = aliases.get(value.strip().lower())
    if mode is None:
        raise InvalidSpec("SLMOPS_KSERVE_DEPLOYMENT_MODE", f"{value!r} is not a KServe deployment mode; one of "
                                                            f"{', '.join(MODES)}")  # fmt: skip
    return mode


def _resources(revision: Revision) -> dict[str, dict[str, str]]:
    """The predictor's requests and limits: what the revision asks for, else the defaults."""
    requests, limits = dict(_DEFAULT_RESOURCES["requests"]), dict(_DEFAULT_RESOURCES["limits"])
    if revision.cpus:
        requests["cpu"] = limits["cpu"] = _cpu(revision.cpus)
    if revision.memory:
        requests["memory"] = limits["memory"] = revision.memory
    if revision.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(revision.gpus)
    return {"requests": requests, "limits": limits}


def _revision_resources(isvc: dict[str, Any]) -> dict[str, Any]:
    """The resources and limits a live InferenceService's predictor asks for, as Revision fields (for a rollback)."""
    limits = (((isvc.get("spec", {}).get("predictor") or {}).get("model") or {}).get("resources") or {}) \
        .get("limits") or {}  # fmt: skip
    cpu, memory, gpus = (
        str(limits.get("cpu", "")),
        str(limits.get("memory", "")),
        limits.get("nvidia.com/gpu"),
    )
    model = (isvc.get("spec", {}).get("predictor") or {}).get("model") or {}
    return {
        "limits": PredictorLimits.from_flags([str(a) for a in model.get("args") or []]),
        "cpus": (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu or 0))
        if cpu != _DEFAULT_RESOURCES["limits"]["cpu"] else 0.0,
        "memory": memory if memory != _DEFAULT_RESOURCES["limits"]["memory"] else "",
        "gpus": int(gpus or 0),
    }  # fmt: skip


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check(name: str, revision: Revision) -> None:
    problems = []
    if not _NAME.match(name):
        problems.append(("name", "must be 1-45 lowercase letters, digits or '-', starting with a letter "
                                 "and ending with a letter or digit (a Kubernetes name KServe can extend)"))  # fmt: skip
    if revision.number < 1:
        problems.append(("revision", f"must be 1 or more, not {revision.number}"))
    if not revision.storage_uri:
        problems.append(("storage_uri", "is required"))
    if not 0 <= revision.traffic_percent <= 100:
        problems.append(("traffic_percent", f"must be between 0 and 100, not {revision.traffic_percent}"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])


def _reappliable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object read from the API server without what the server owns, fit for `kubectl apply`."""
    meta = obj.get("metadata", {})
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)}
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", "InferenceService"),
            "metadata": keep, "spec": obj.get("spec", {})}  # fmt: skip


def _write(record_dir: Path | None, body: dict[str, Any]) -> None:
    if record_dir is None:
        return
    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    name = body["metadata"]["name"]
    header = (f"# The InferenceService the slmops serving service applied for {name!r}.\n"
              f"#   kubectl -n {body['metadata'].get('namespace', 'default')} apply -f {MANIFEST_FILE}\n")  # fmt: skip
    (record_dir / MANIFEST_FILE).write_text(header + yaml.safe_dump(body, sort_keys=False))
