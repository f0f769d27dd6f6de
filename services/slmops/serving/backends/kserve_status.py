"""What an InferenceService says, read into a BackendStatus; and the revision history kept on it.

KServe's controller writes the status this module reads
(pkg/apis/serving/v1beta1/inference_service_status.go in KServe):

- `status.url` is the external route, `status.address.url` the cluster-local
  address: in-cluster callers (evaluation, the pipeline) use the address.
- In Knative mode, `status.components.predictor.traffic[]` lists the Knative
  traffic targets. With the annotation `serving.kserve.io/enable-tag-routing:
  "true"` the latest revision's target carries tag `latest` and, during a
  canary, the last rolled-out revision's target carries tag `prev`; each
  tagged target has its own `url` (`http://latest-<isvc>-predictor.<ns>.<domain>`)
  that reaches that revision alone. Knative also makes a Kubernetes Service
  named `<tag>-<isvc>-predictor` for each tag, so the same revision is reached
  in the cluster at `http://<tag>-<isvc>-predictor.<ns>.svc.cluster.local`.
- In Standard mode there is no traffic split: one revision serves. During a
  rolling update (KServe reports the predictor Unknown) and when the new pods
  never become ready (False), the previous revision's pods keep serving.

- The predictor's OIP v2 gRPC port (`PREDICTOR_GRPC_PORT`, `h2c`) is on
  KServe's predictor Service in Standard mode only, so only there does a
  deployment (and its one serving revision) have a `grpc_address`: the host of
  the cluster-local address with that port.

Which of the project's revision numbers a Knative revision serves is kept in
annotations, since KServe's status names only Knative revisions; every
revision's model is kept there too, so a rollback needs nothing but the
InferenceService (see `history`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from slmops.serving.backends import DEPLOYING, FAILED, READY, BackendStatus, RevisionStatus

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
REVISION_ANNOTATION = "serving.slmops.io/revision"  # the latest revision's number
ROLLED_OUT_ANNOTATION = "serving.slmops.io/rolled-out-revision"  # the one that had all traffic last
ROLLED_OUT_HISTORY_ANNOTATION = "slmops.io/rolled-out-revisions"  # "1,2,4": every rollout, oldest first
_REVISION_KEY = re.compile(r"^slmops\.io/revision-(\d+)-(model-uri|storage-uri|time)$")
_READY_TYPES = ("Ready", "PredictorReady")
KEEP_REVISIONS = 20  # revisions whose model the annotations keep
PREDICTOR_HTTP_PORT, PREDICTOR_GRPC_PORT = 8080, 8081  # the project's runtime: --http-port, --grpc-port


def revision_annotations(number: int, model_uri: str, storage_uri: str, time: str) -> dict[str, str]:
    """The annotations that keep one revision's model on the InferenceService."""
    prefix = f"slmops.io/revision-{number}"
    return {f"{prefix}-model-uri": model_uri, f"{prefix}-storage-uri": storage_uri, f"{prefix}-time": time}


@dataclass(frozen=True)
class Recorded:
    """One revision as the InferenceService's annotations keep it."""

    number: int
    model_uri: str
    storage_uri: str
    time: str


def history(annotations: dict[str, str]) -> tuple[dict[int, Recorded], list[int]]:
    """(every recorded revision by number, the rolled-out numbers oldest first) from the annotations."""
    fields: dict[int, dict[str, str]] = {}
    for key, value in annotations.items():
        if match := _REVISION_KEY.match(key):
            fields.setdefault(int(match[1]), {})[match[2]] = value
    recorded = {
        n: Recorded(n, f.get("model-uri", ""), f["storage-uri"], f.get("time", ""))
        for n, f in fields.items() if f.get("storage-uri")
    }  # fmt: skip
    rolled_out = [
        n for n in (_int(p) for p in annotations.get(ROLLED_OUT_HISTORY_ANNOTATION, "").split(",")) if n
    ]
    return recorded, rolled_out


def pruned(annotations: dict[str, str]) -> dict[str, str | None]:
    """Annotation changes that drop the models of all but the newest KEEP_REVISIONS revisions (None removes)."""
    recorded, _ = history({k: v for k, v in annotations.items() if v is not None})
    old = sorted(recorded)[:-KEEP_REVISIONS] if len(recorded) > KEEP_REVISIONS else []
    return {k: None for k in annotations if (m := _REVISION_KEY.match(k)) and int(m[1]) in old}


def status_of(isvc: dict[str, Any]) -> BackendStatus:
    """Read an InferenceService's conditions, URLs and traffic into a BackendStatus."""
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    namespace = isvc.get("metadata", {}).get("namespace") or "default"
    latest = _int(annotations.get(REVISION_ANNOTATION))
    rolled_out = _int(annotations.get(ROLLED_OUT_ANNOTATION))
    _, rollouts = history(annotations)
    before = next((n for n in reversed(rollouts) if n != latest), None)  # what served before `latest`
    status = isvc.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    predictor = (status.get("components") or {}).get("predictor") or {}
    ready_name, created_name = predictor.get("latestReadyRevision"), predictor.get("latestCreatedRevision")
    external = status.get("url") or ""
    address = (status.get("address") or {}).get("url") or ""
    predictor_address = (predictor.get("address") or {}).get("url") or ""

    traffic: dict[int, int] = {}
    revisions: dict[int, RevisionStatus] = {}
    for target in predictor.get("traffic") or []:
        if target.get("tag") == "prev" or not target.get("latestRevision"):
            number = rolled_out
        elif created_name and target.get("revisionName") not in (None, created_name):
            number = before  # Knative still routes "latest" to the revision before: the new one is not ready
        else:
            number = latest
        if number is None:
            continue
        traffic[number] = traffic.get(number, 0) + int(target.get("percent") or 0)
        if target.get("url") and target.get("tag") in ("latest", "prev") and (
                number != latest or target.get("revisionName") in (None, ready_name)):  # fmt: skip
            revisions[number] = RevisionStatus(
                state=READY,
                url=in_cluster(target["url"], predictor_address, namespace),
                external_url=target["url"],
            )

    is_ready = (conditions.get("Ready") or {}).get("status") == "True"
    if ready_name and ready_name == created_name:
        ready_revision = latest
    elif ready_name:
        ready_revision = rolled_out if rolled_out != latest else before
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
        reason = (
            _describe(pending[0]) if pending else "waiting for KServe to report the InferenceService's state"
        )
    mode = annotations.get(MODE_ANNOTATION) or status.get("deploymentMode") or ""
    if mode in ("Standard", "RawDeployment") and latest is not None:  # no split: one revision serves
        if is_ready:
            traffic, ready_revision = {latest: 100}, latest
        elif before is not None:  # a rolling update under way or stuck: the previous pods keep serving
            traffic, ready_revision = {before: 100}, before
            state = READY if state == DEPLOYING else state
    grpc_host = (
        urlsplit(predictor_address or address).hostname if mode in ("Standard", "RawDeployment") else ""
    )
    return BackendStatus(state=state, url=address or external, external_url=external,
                         ready_revision=ready_revision, traffic=traffic, reason=reason, revisions=revisions,
                         grpc_address=f"{grpc_host}:{PREDICTOR_GRPC_PORT}" if grpc_host else "")  # fmt: skip


def in_cluster(url: str, predictor_address: str, namespace: str) -> str:
    """The cluster-local URL of a tagged revision: Knative's Service `<tag>-<route>` in the same namespace."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or host.endswith(".svc.cluster.local") or host.endswith(".svc"):
        return url
    address_host = urlsplit(predictor_address).hostname or ""
    suffix = address_host.split(".", 1)[1] if "." in address_host else f"{namespace}.svc.cluster.local"
    return f"http://{host.split('.', 1)[0]}.{suffix}{parts.path.rstrip('/')}"


def _describe(condition: dict[str, Any]) -> str:
    parts = [condition.get("type", ""), condition.get("reason") or "", condition.get("message") or ""]
    head = ": ".join(p for p in parts[:2] if p)
    return f"{head} - {parts[2]}" if parts[2] else head


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
