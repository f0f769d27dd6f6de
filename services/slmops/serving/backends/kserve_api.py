"""The Kubernetes API for the kserve backend: the client's configuration, and its failures as the
platform's errors (the API server's own text cut short)."""

from __future__ import annotations

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from slmops.core.errors import Conflict, InvalidSpec, NotFound, SlmopsError, Unavailable

MAX_MESSAGE = 300  # characters of the API server's message kept in an error


def default_api_client() -> k8s.ApiClient:
    """In-cluster configuration when running in a pod, else the kubeconfig."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as e:
            raise Unavailable(
                f"no Kubernetes configuration: not in a cluster and no usable kubeconfig ({e})"
            ) from e
    return k8s.ApiClient(configuration)


def api_error(e: k8s.ApiException, what: str, namespace: str, name: str) -> SlmopsError:
    """The platform's error for a failed call on InferenceService namespace/name."""
    message = f"{e.status} {e.reason}: {_api_message(e)}"
    if e.status == 404:
        return NotFound("inference service", f"{namespace}/{name}")
    if e.status == 409:
        return Conflict(f"cannot {what} InferenceService {namespace}/{name}: {message}")
    if e.status in (400, 422):
        return InvalidSpec("inference_service", f"the API server refused it: {message}")
    if e.status in (401, 403):
        return Unavailable(f"the Kubernetes API server refused to {what} InferenceService "
                           f"{namespace}/{name} ({message}); check the credentials and RBAC")  # fmt: skip
    return Unavailable(
        f"the Kubernetes API server failed to {what} InferenceService {namespace}/{name} ({message})"
    )


def _api_message(e: k8s.ApiException) -> str:
    """The Status object's message (else the body), cut short: it is the API server's text."""
    try:
        text = str(yaml.safe_load(e.body or "").get("message") or e.body)
    except Exception:  # a body that is not a Status object: show it as it is
        text = str(e.body or "")
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def why(e: BaseException, timeout_s: float) -> str:
    """Why a connection to the API server failed, in a few words."""
    reason = getattr(e, "reason", None) or e
    text = str(reason)
    if (
        "refused" in text.lower()
    ):  # before the timeout check: urllib3's NewConnectionError is a timeout error too
        return "connection refused"
    if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"timed out after {timeout_s:g}s"
    return text
