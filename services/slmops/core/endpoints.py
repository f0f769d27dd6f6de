"""Calling OpenAI-compatible endpoints: what synthesis (teachers) and evaluation (targets, judges) share.

The bearer token a job sends (`resolve_api_key`): the key a request names
(`api_key_env`), read where the job runs and only for a host the operator
allowed for it (core/secret_refs); with no name, the platform's predictor key
(SLMOPS_PREDICTOR_API_KEY_FILE, core/predictor_key) when the URL is one of the
platform's own deployments; else none. The platform's own deployments are,
narrowly: loopback hosts (the local backend's predictors and routers listen on
127.0.0.1) and, in a cluster (a pod: KUBERNETES_SERVICE_HOST is set), the
in-cluster hosts of the KServe InferenceServices,
`*.<SLMOPS_KSERVE_NAMESPACE>.svc.cluster.local` and `*.<namespace>.svc`. The
predictor key goes to no other host (outside a pod such a name may be answered
by anyone on the network).

Clients come from `openai_client` and core/egress: every connection they open
passes the egress allow-list, and they follow no redirects. Error text from an
upstream server is cut to MAX_UPSTREAM_CHARS (`describe_error`, `cut`) before it
reaches a log, a span, a job record or a message.
"""

from __future__ import annotations

import os
import re

import openai

from slmops.core import egress, predictor_key, secret_refs, settings

MAX_UPSTREAM_CHARS = 200
_SPACE = re.compile(r"\s+")


def is_platform_url(base_url: str, *, resolve: bool = True) -> bool:
    """Whether base_url is one of the platform's own deployments (see above).

    resolve: a loopback name (localhost) must resolve to loopback addresses only.
    """
    host = egress.host_of(base_url)
    if not host:
        return False
    if egress.is_loopback(host):
        if not resolve or egress.parse_ip(host) is not None:
            return True
        try:
            return all(egress.effective(ip).is_loopback for ip in egress.resolve(host, 0))
        except Exception:  # a name that does not resolve is no deployment
            return False
    namespace = settings.get("kserve_namespace").strip().lower()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    return (
        in_cluster
        and bool(namespace)
        and host.endswith((f".{namespace}.svc.cluster.local", f".{namespace}.svc"))
    )


def resolve_api_key(env_name: str, base_url: str, field_name: str = "api_key_env") -> str:
    """The bearer token for requests to base_url: the key in env_name (an allowed name, for an allowed
    host: InvalidSpec otherwise); with no name, the predictor key for a platform deployment; else "none"."""
    if env_name:
        return secret_refs.read_env_secret(env_name, base_url, field_name)
    if is_platform_url(base_url):
        return predictor_key.read() or "none"
    return "none"


def openai_client(base_url: str, api_key: str, *, timeout: float, max_retries: int = 0,
                  asynchronous: bool = False) -> openai.OpenAI | openai.AsyncOpenAI:  # fmt: skip
    """An openai client whose connections pass the egress allow-list (core/egress)."""
    if asynchronous:
        return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                  http_client=egress.async_http_client(timeout))  # fmt: skip
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                         http_client=egress.http_client(timeout))  # fmt: skip


def cut(text: str, limit: int = MAX_UPSTREAM_CHARS) -> str:
    """Upstream text on one line, at most limit characters of it, URL passwords redacted."""
    text = str(text)
    head = _SPACE.sub(" ", "".join(c if c.isprintable() else " " for c in text[: limit * 4])).strip()
    head = secret_refs.redact(head)
    if len(head) <= limit and len(text) <= limit * 4:
        return head
    return f"{head[:limit]}... (cut from {len(text)} characters)"


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return "" if body is None else str(body)


def describe_error(exc: BaseException, base_url: str = "") -> str:
    """A one-line reason: the HTTP status and the start of what the server said, an egress refusal,
    or the connection problem and where."""
    if (refused := egress.refusal(exc)) is not None:
        return f"EgressRefused: {refused}"
    if isinstance(exc, openai.APIStatusError):
        said = cut(_upstream_message(exc))
        return f"HTTP {exc.status_code}" + (f": {said}" if said else "")
    where = f" ({base_url})" if base_url else ""
    return f"{type(exc).__name__}: {cut(str(exc))}{where}"
