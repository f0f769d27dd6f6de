"""Who may call the gRPC services: a bearer token, TLS and mutual TLS, from settings.

Servers: `TokenInterceptor` refuses a call without `authorization: Bearer
<token>` (UNAUTHENTICATED) when a token file is configured; the health
service stays open for probes. `server_credentials()` gives TLS credentials
when a certificate is configured, requiring client certificates when a client
CA is too. Clients: `client_token()` and `channel_credentials()` give what to
send (see core/clients.py).

The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from slmops.core import settings
from slmops.core.grpc_handlers import wrap_handler

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes need no credentials
TOKEN_FILE = Path("auth") / "token"  # under the data dir, made by `slmops up`


class AuthConfigError(RuntimeError):
    """A configured credential file is missing, empty or unreadable."""


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if not data.strip():
        raise AuthConfigError(f"{what} {path!r} is empty")
    return data


def server_token() -> str:
    """The token servers require ('' when none is configured)."""
    path = settings.get("auth_token_file")
    return _read(path, "SLMOPS_AUTH_TOKEN_FILE").decode().strip() if path else ""


def default_token_file() -> Path:
    return settings.data_dir() / TOKEN_FILE


def client_token() -> str:
    """The token clients send: the configured file, else the local stack's, else none."""
    path = settings.get("auth_token_file")
    if path:
        return _read(path, "SLMOPS_AUTH_TOKEN_FILE").decode().strip()
    local = default_token_file()
    return local.read_text(encoding="utf-8").strip() if local.is_file() else ""


def ensure_token_file(path: Path | None = None) -> Path:
    """A token file readable by this user only, made with a fresh random token when missing."""
    path = path or default_token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32))
    os.chmod(path, 0o600)
    return path


def server_credentials() -> grpc.ServerCredentials | None:
    """TLS credentials for the services, or None for plain text."""
    cert, key = settings.get("tls_cert_file"), settings.get("tls_key_file")
    if not cert and not key:
        return None
    if not (cert and key):
        raise AuthConfigError("set both SLMOPS_TLS_CERT_FILE and SLMOPS_TLS_KEY_FILE")
    pair = (_read(key, "SLMOPS_TLS_KEY_FILE"), _read(cert, "SLMOPS_TLS_CERT_FILE"))
    client_ca = settings.get("tls_client_ca_file")
    roots = _read(client_ca, "SLMOPS_TLS_CLIENT_CA_FILE") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def channel_credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials for clients (with a client certificate for mutual TLS), or None for plain text."""
    ca, cert, key = (settings.get(n) for n in ("tls_ca_file", "tls_client_cert_file", "tls_client_key_file"))
    if not (ca or cert or settings.get("tls_cert_file")):
        return None
    if bool(cert) != bool(key):
        raise AuthConfigError("set both SLMOPS_TLS_CLIENT_CERT_FILE and SLMOPS_TLS_CLIENT_KEY_FILE")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "SLMOPS_TLS_CA_FILE") if ca else None,
        private_key=_read(key, "SLMOPS_TLS_CLIENT_KEY_FILE") if key else None,
        certificate_chain=_read(cert, "SLMOPS_TLS_CLIENT_CERT_FILE") if cert else None,
    )


def channel_options() -> list[tuple[str, Any]]:
    name = settings.get("tls_server_name")
    return [("grpc.ssl_target_name_override", name)] if name else []


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as handler that ends the call with UNAUTHENTICATED."""
    message = "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # never reached: abort raises

    return wrap_handler(handler, unary=lambda _inner: unary, stream=lambda _inner: streaming)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the bearer token (UNAUTHENTICATED); health stays open."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if hmac.compare_digest(sent_bytes, self._expected):
            return handler
        return _denied(handler)
