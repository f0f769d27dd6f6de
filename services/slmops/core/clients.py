"""gRPC clients of the services, for the CLI, the demo and the services that call each other.

Addresses: an explicit argument, then SLMOPS_<SERVICE>_ADDR, then the running
local stack's record (<data_dir>/stack.json), then the default port. Channels
carry the credentials the settings name (core/auth.py: TLS, a client
certificate, the bearer token) and the caller's trace (OpenTelemetry client
interceptors). gRPC itself retries UNAVAILABLE, with exponential backoff and
a bound, by the channel's service config, and `call` waits (wait_for_ready, up
to its deadline) for a service that is still starting; other codes fail at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

from slmops.api.v1 import (
    conversion_pb2_grpc,
    evaluation_pb2_grpc,
    pipeline_pb2_grpc,
    serving_pb2_grpc,
    synthesis_pb2_grpc,
    training_pb2_grpc,
)
from slmops.core import auth, settings

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "synthesis": synthesis_pb2_grpc.SynthesisServiceStub,
    "training": training_pb2_grpc.TrainingServiceStub,
    "conversion": conversion_pb2_grpc.ConversionServiceStub,
    "serving": serving_pb2_grpc.ServingServiceStub,
    "evaluation": evaluation_pb2_grpc.EvaluationServiceStub,
    "pipeline": pipeline_pb2_grpc.PipelineServiceStub,
}
# gRPC's own retries (https://github.com/grpc/proposal/blob/master/A6-client-retries.md): UNAVAILABLE only.
SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "4s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }]
}  # fmt: skip
T = TypeVar("T")


class _Token(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # fmt: skip
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return (
            details._replace(metadata=metadata)
            if hasattr(details, "_replace")
            else _Details(details, metadata)
        )

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]):
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready, self.compression = (
            getattr(base, "wait_for_ready", None),
            getattr(base, "compression", None),
        )
        self.metadata = metadata


def channel(addr: str) -> grpc.Channel:
    """A channel to addr with the configured TLS, token, retries and tracing."""
    options = [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
               *auth.channel_options()]  # fmt: skip
    credentials = auth.channel_credentials()
    raw = (
        grpc.insecure_channel(addr, options)
        if credentials is None
        else grpc.secure_channel(addr, credentials, options)
    )
    token = auth.client_token()
    with_token = grpc.intercept_channel(raw, _Token(token)) if token else raw
    return grpcext.intercept_channel(with_token, client_interceptor())


def stack_file() -> os.PathLike[str]:
    return settings.data_dir() / "stack.json"


def read_stack() -> dict[str, Any]:
    try:
        return json.loads(open(stack_file()).read())
    except (OSError, json.JSONDecodeError):
        return {}


def address(service: str, override: str | None = None) -> str:
    if override:
        return override
    env = settings.VARS[f"{service}_addr"].env
    if os.environ.get(env):
        return os.environ[env]
    recorded = read_stack().get("services", {}).get(service, {}).get("address")
    return recorded or settings.service_addr(service)


_channels: dict[str, grpc.Channel] = {}


def stub(service: str, override: str | None = None) -> Any:
    addr = address(service, override)
    if addr not in _channels:
        _channels[addr] = channel(addr)
    return STUBS[service](_channels[addr])


def call(method: Callable[..., T], request: Any, *, timeout: float = 30.0) -> T:
    """Call a unary RPC of a `stub`: it waits for the service to be reachable and gRPC retries
    UNAVAILABLE answers (SERVICE_CONFIG), all within `timeout` seconds."""
    return method(request, timeout=timeout, wait_for_ready=True)


def stream(method: Callable[..., Iterator[T]], request: Any, *, timeout: float | None = None) -> Iterator[T]:
    return method(request, timeout=timeout)


def close() -> None:
    for channel in _channels.values():
        channel.close()
    _channels.clear()
