"""The kserve serving backend: one InferenceService per deployment.

The manifest is built with the `kserve` SDK's models and applied through the
official Kubernetes client's CustomObjectsApi, in the shape of
k8s/examples/inferenceservice-onnx.yaml: model format `onnx-genai` served by
the project's ClusterServingRuntime (`slmops-predictor` by default).

Traffic uses KServe's own canary: a new revision patches the predictor's
storageUri and sets `canaryTrafficPercent`; KServe gives the latest revision
that share and the last rolled-out revision the rest. Promote removes the
field (all to the latest), rollback sets it to 0 (all to the previous one).
Which of our revision numbers a Knative revision serves is kept in two
annotations, since KServe's status names only Knative revisions:
`serving.slmops.io/revision` (the latest) and
`serving.slmops.io/rolled-out-revision` (the one that had all traffic last).
"""

from __future__ import annotations

import re
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
from kubernetes import config as k8s_config

from slmops.core import settings
from slmops.core.errors import Conflict, InvalidSpec, NotFound, SlmopsError, Unavailable
from slmops.serving.backends import DEPLOYING, FAILED, READY, BackendStatus, Revision

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
MODEL_FORMAT, MODEL_FORMAT_VERSION = "onnx-genai", "1"
REVISION_ANNOTATION = "serving.slmops.io/revision"
ROLLED_OUT_ANNOTATION = "serving.slmops.io/rolled-out-revision"
MODEL_URI_ANNOTATION = "serving.slmops.io/model-uri"
MANIFEST_FILE = "inferenceservice.yaml"
# KServe appends "-predictor-00001" and Knative more: keep names well under 63.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$")
_READY_TYPES = ("Ready", "PredictorReady")


class KServeBackend:
    """Deployments as InferenceServices in one namespace."""

    def __init__(
        self,
        api_client: k8s.ApiClient | None = None,
        *,
        namespace: str | None = None,
        runtime: str | None = None,
        service_account: str | None = None,
        request_timeout_s: float = 10.0,
        min_replicas: int = 1,
        max_replicas: int = 3,
    ):
        self.namespace = settings.get("kserve_namespace", namespace)
        self.runtime = settings.get("kserve_runtime", runtime)
        self.service_account = settings.get("kserve_service_account", service_account)
        self.request_timeout_s = request_timeout_s
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self._api_client = api_client
        self._api: k8s.CustomObjectsApi | None = None

    # -- the manifest ---------------------------------------------------------

    def build(self, name: str, revision: Revision) -> dict[str, Any]:
        """The InferenceService serving `revision`, as the plain dict that is applied."""
        _check(name, revision)
        model = V1beta1ModelSpec(
            model_format=V1beta1ModelFormat(name=MODEL_FORMAT, version=MODEL_FORMAT_VERSION),
            runtime=self.runtime,
            storage_uri=revision.storage_uri,
            resources=k8s.V1ResourceRequirements(
                requests={"cpu": "1", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"}
            ),
        )
        predictor = V1beta1PredictorSpec(
            model=model,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            scale_metric="concurrency",
            scale_target=4,
            service_account_name=self.service_account or None,
            canary_traffic_percent=revision.traffic_percent if revision.traffic_percent < 100 else None,
        )
        isvc = V1beta1InferenceService(
            api_version=API_VERSION,
            kind="InferenceService",
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/part-of": "slmops", "slmops.io/deployment": name},
                annotations={
                    # Canary rollouts (canaryTrafficPercent) need KServe's Serverless mode.
                    "serving.kserve.io/deploymentMode": "Serverless",
                    "serving.kserve.io/enable-prometheus-scraping": "true",
                    REVISION_ANNOTATION: str(revision.number),
                    MODEL_URI_ANNOTATION: revision.model_uri,
                },
            ),
            spec=V1beta1InferenceServiceSpec(predictor=predictor),
        )
        body = _KServeSerializer().sanitize_for_serialization(isvc)
        if not body["spec"]["predictor"]["model"].get("name"):
            body["spec"]["predictor"]["model"].pop("name", None)  # the SDK's default ''
        return body

    # -- operations -----------------------------------------------------------

    def apply(self, name: str, revision: Revision, record_dir: Path | None = None) -> dict[str, Any]:
        """Create the InferenceService, or roll `revision` out on the existing one.

        On an existing one the predictor's storageUri changes and, below 100
        percent, canaryTrafficPercent starts a canary next to the last rolled-out
        revision; at 100 the new revision replaces it.
        """
        body = self.build(name, revision)
        annotations = body["metadata"]["annotations"]
        current = self._get(name, missing_ok=True)
        if current is None:
            annotations[ROLLED_OUT_ANNOTATION] = str(revision.number)
            self._call(
                "create", name, self._objects().create_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, body,
            )
            _write(record_dir, body)
            return body
        old = current.get("metadata", {}).get("annotations") or {}
        if revision.traffic_percent >= 100:
            annotations[ROLLED_OUT_ANNOTATION] = str(revision.number)
        else:
            annotations[ROLLED_OUT_ANNOTATION] = old.get(ROLLED_OUT_ANNOTATION) or old.get(REVISION_ANNOTATION, "")
        # The whole desired predictor; None removes canaryTrafficPercent (a merge patch drops null keys).
        predictor = {**body["spec"]["predictor"]}
        predictor["canaryTrafficPercent"] = predictor.get("canaryTrafficPercent")
        patch = {
            "metadata": {"labels": body["metadata"]["labels"], "annotations": annotations},
            "spec": {"predictor": predictor},
        }
        self._patch(name, patch)
        _write(record_dir, body)
        return body

    def set_traffic(self, name: str, percent: int, record_dir: Path | None = None) -> None:
        """Give the latest revision `percent` of the traffic, the last rolled-out one the rest."""
        if not 0 <= percent <= 100:
            raise InvalidSpec("traffic_percent", f"must be between 0 and 100, not {percent}")
        patch: dict[str, Any] = {"spec": {"predictor": {"canaryTrafficPercent": percent if percent < 100 else None}}}
        if percent == 100:
            current = self._get(name)
            latest = (current.get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)
            if latest:
                patch["metadata"] = {"annotations": {ROLLED_OUT_ANNOTATION: latest}}
        self._patch(name, patch, record_dir)

    def promote(self, name: str, record_dir: Path | None = None) -> None:
        """All traffic to the latest revision: canaryTrafficPercent removed."""
        self.set_traffic(name, 100, record_dir)

    def rollback(self, name: str, record_dir: Path | None = None) -> None:
        """All traffic back to the last rolled-out revision: canaryTrafficPercent 0."""
        self.set_traffic(name, 0, record_dir)

    def delete(self, name: str) -> None:
        self._call(
            "delete", name, self._objects().delete_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name,
        )

    def status(self, name: str) -> BackendStatus:
        return status_of(self._get(name))

    def restore(self, name: str, revisions: list[Revision], runtime: dict[int, dict[str, Any]],
                serving: int, latest: int, percent: int) -> None:  # fmt: skip
        """Nothing to take over: the InferenceService itself is the state, in the cluster."""

    # -- the Kubernetes API ---------------------------------------------------

    def _objects(self) -> k8s.CustomObjectsApi:
        if self._api is None:
            self._api = k8s.CustomObjectsApi(self._api_client or _default_api_client())
        return self._api

    def _get(self, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            return self._call(
                "read", name, self._objects().get_namespaced_custom_object,
                GROUP, VERSION, self.namespace, PLURAL, name,
            )
        except NotFound:
            if missing_ok:
                return None
            raise

    def _patch(self, name: str, patch: dict[str, Any], record_dir: Path | None = None) -> None:
        result = self._call(
            "patch", name, self._objects().patch_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, patch,
        )
        if record_dir is not None and isinstance(result, dict):
            _write(record_dir, _reappliable(result))

    def _call(self, what: str, name: str, fn, *args: Any) -> Any:
        """One API call; its failures as the platform's errors."""
        try:
            return fn(*args, _request_timeout=self.request_timeout_s)
        except k8s.ApiException as e:
            raise _api_error(e, what, self.namespace, name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            host = self._objects().api_client.configuration.host
            raise Unavailable(
                f"Kubernetes API server at {host} cannot be reached ({_why(e, self.request_timeout_s)}) "
                f"while trying to {what} InferenceService {self.namespace}/{name}; "
                "check the kubeconfig or the in-cluster service account"
            ) from e


def status_of(isvc: dict[str, Any]) -> BackendStatus:
    """Read an InferenceService's conditions, URL and traffic into a BackendStatus."""
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    latest = _int(annotations.get(REVISION_ANNOTATION))
    rolled_out = _int(annotations.get(ROLLED_OUT_ANNOTATION))
    status = isvc.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    predictor = (status.get("components") or {}).get("predictor") or {}

    traffic: dict[int, int] = {}
    for target in predictor.get("traffic") or []:
        number = latest if target.get("latestRevision") else rolled_out
        if number is not None:
            traffic[number] = traffic.get(number, 0) + int(target.get("percent") or 0)

    ready_name, created_name = predictor.get("latestReadyRevision"), predictor.get("latestCreatedRevision")
    is_ready = (conditions.get("Ready") or {}).get("status") == "True"
    if ready_name and ready_name == created_name:
        ready_revision = latest
    elif ready_name:
        ready_revision = rolled_out
    else:
        ready_revision = latest if is_ready else None

    failed = [c for t in _READY_TYPES if (c := conditions.get(t)) and c.get("status") == "False"]
    if failed:
        state, reason = FAILED, _describe(next((c for c in failed if c.get("reason")), failed[0]))
    elif is_ready:
        state, reason = READY, ""
    else:
        state = DEPLOYING
        pending = [c for t in _READY_TYPES if (c := conditions.get(t))]
        reason = _describe(pending[0]) if pending else "waiting for KServe to report the InferenceService's state"
    return BackendStatus(state=state, url=status.get("url") or "", ready_revision=ready_revision,
                         traffic=traffic, reason=reason)


def _check(name: str, revision: Revision) -> None:
    problems = []
    if not _NAME.match(name):
        problems.append(("name", "must be 1-45 lowercase letters, digits or '-', starting with a letter "
                                 "and ending with a letter or digit (a Kubernetes name KServe can extend)"))
    if revision.number < 1:
        problems.append(("revision", f"must be 1 or more, not {revision.number}"))
    if not revision.storage_uri:
        problems.append(("storage_uri", "is required"))
    if not 0 <= revision.traffic_percent <= 100:
        problems.append(("traffic_percent", f"must be between 0 and 100, not {revision.traffic_percent}"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])


def _default_api_client() -> k8s.ApiClient:
    """In-cluster configuration when running in a pod, else the kubeconfig."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as e:
            raise Unavailable(f"no Kubernetes configuration: not in a cluster and no usable kubeconfig ({e})") from e
    return k8s.ApiClient(configuration)


def _api_error(e: k8s.ApiException, what: str, namespace: str, name: str) -> SlmopsError:
    message = f"{e.status} {e.reason}: {_api_message(e)}"
    if e.status == 404:
        return NotFound("inference service", f"{namespace}/{name}")
    if e.status == 409:
        return Conflict(f"cannot {what} InferenceService {namespace}/{name}: {message}")
    if e.status in (400, 422):
        return InvalidSpec("inference_service", f"the API server refused it: {message}")
    if e.status in (401, 403):
        return Unavailable(f"the Kubernetes API server refused to {what} InferenceService "
                           f"{namespace}/{name} ({message}); check the credentials and RBAC")
    return Unavailable(f"the Kubernetes API server failed to {what} InferenceService {namespace}/{name} ({message})")


def _api_message(e: k8s.ApiException) -> str:
    try:
        return str(yaml.safe_load(e.body or "").get("message") or e.body)
    except Exception:  # a body that is not a Status object: show it as it is
        return str(e.body or "")


def _why(e: BaseException, timeout_s: float) -> str:
    reason = getattr(e, "reason", None) or e
    text = str(reason)
    if "refused" in text.lower():  # before the timeout check: urllib3's NewConnectionError is a timeout error too
        return "connection refused"
    if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"timed out after {timeout_s:g}s"
    return text


def _describe(condition: dict[str, Any]) -> str:
    parts = [condition.get("type", ""), condition.get("reason") or "", condition.get("message") or ""]
    head = ": ".join(p for p in parts[:2] if p)
    return f"{head} - {parts[2]}" if parts[2] else head


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _reappliable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object read from the API server without what the server owns, fit for `kubectl apply`."""
    meta = obj.get("metadata", {})
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)}
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", "InferenceService"),
            "metadata": keep, "spec": obj.get("spec", {})}


def _write(record_dir: Path | None, body: dict[str, Any]) -> None:
    if record_dir is None:
        return
    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    name = body["metadata"]["name"]
    header = (f"# The InferenceService the slmops serving service applied for {name!r}.\n"
              f"#   kubectl -n {body['metadata'].get('namespace', 'default')} apply -f {MANIFEST_FILE}\n")
    (record_dir / MANIFEST_FILE).write_text(header + yaml.safe_dump(body, sort_keys=False))
