"""What every request passes before a route sees it: the API key and the body limit.

- API key: when the predictor has one (`--api-key-file`, or the environment
  variable `--api-key-env` names), HTTP requests need `Authorization: Bearer
  KEY` and gRPC calls the `authorization` metadata with the same value; others
  get 401 in OpenAI's error shape (gRPC: UNAUTHENTICATED). Only the health and
  readiness probes (`/`, `/v2/health/live|ready`, `/v2/models/NAME/ready`) and
  `/metrics` stay open, so probes and scrapers need no secret; everything
  else, `/slmops/v1/info` and the API docs included, needs the key.
- Routes not served: KServe's model repository routes (`/v2/repository/...`,
  load and unload by name) answer 404, and so do the API docs
  (`/openapi.json`, `/docs`, `/redoc`) unless the predictor runs with `--docs`.
- Body limit: a body over `max_body_bytes` gets 413, whether its
  Content-Length says so or it streams past the limit.

The key is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from slmops.predictor import metrics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def load_api_key(env_name: str = "", file: str = "") -> str | None:
    """The API key from a secret file (stripped) or the named environment variable; None: no key."""
    if file:
        key = Path(file).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"the API key file {file!r} is empty")
        return key
    if env_name:
        return os.environ.get(env_name) or None
    return None


_OPEN_PATHS = frozenset(("/", "/v2/health/live", "/v2/health/ready", "/metrics"))
_MODEL_READY = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/ready")


def _is_open(path: str) -> bool:
    """Probes and the metrics scrape: the only paths served without the key (exact matches)."""
    return path in _OPEN_PATHS or _MODEL_READY.fullmatch(path) is not None


_DOC_PATHS = frozenset(("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"))


def is_hidden(path: str, docs: bool = False) -> bool:
    """Routes KServe's app has that a predictor does not serve: model repository calls, docs unless on."""
    return path.startswith("/v2/repository") or (not docs and path in _DOC_PATHS)


def bearer_matches(header: str | None, key: str) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: API key, then routes not served, then body limit."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, docs: bool = False):
        self.app, self.api_key, self.max_body_bytes, self.docs = app, api_key, max_body_bytes, docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and not _is_open(scope["path"]):
            if not bearer_matches(headers.get("authorization"), self.api_key):
                metrics.REJECTED.labels("unauthorized").inc()
                await _answer(send, 401, "Incorrect or missing API key: send Authorization: Bearer KEY.",
                              "invalid_api_key", {"www-authenticate": "Bearer"})  # fmt: skip
                return
        if is_hidden(scope["path"], self.docs):
            await _answer(send, 404, "Not Found", "not_found")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _TooLarge
            return message

        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted, watched_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        metrics.REJECTED.labels("body_too_large").inc()
        await _answer(send, 413, f"The request body is larger than {self.max_body_bytes} bytes.",
                      "request_too_large")  # fmt: skip


async def _answer(
    send: Send, status: int, message: str, code: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def grpc_interceptor(api_key: str) -> Any:
    """A grpc.aio server interceptor refusing calls without the key (health calls stay open)."""
    import grpc

    open_methods = ("/inference.GRPCInferenceService/ServerLive",
                    "/inference.GRPCInferenceService/ServerReady",
                    "/inference.GRPCInferenceService/ModelReady")  # fmt: skip

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        metrics.REJECTED.labels("unauthorized").inc()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "incorrect or missing API key")

    class KeyInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            if details.method in open_methods:
                return await continuation(details)
            metadata = dict(details.invocation_metadata or ())
            if bearer_matches(metadata.get("authorization"), api_key):
                return await continuation(details)
            return grpc.unary_unary_rpc_method_handler(refuse)

    return KeyInterceptor()
