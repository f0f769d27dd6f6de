"""gRPC clients of the services, as the CLI and the demo use them.

Addresses: an explicit argument, then SLMOPS_<SERVICE>_ADDR, then the running
local stack's record (<data_dir>/stack.json), then the default port. Calls
carry the caller's trace (OpenTelemetry client interceptors) and retry only
UNAVAILABLE, with backoff and a bound.
"""

from __future__ import annotations

import json
import os
import time
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
from slmops.core import settings

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "synthesis": synthesis_pb2_grpc.SynthesisServiceStub,
    "training": training_pb2_grpc.TrainingServiceStub,
    "conversion": conversion_pb2_grpc.ConversionServiceStub,
    "serving": serving_pb2_grpc.ServingServiceStub,
    "evaluation": evaluation_pb2_grpc.EvaluationServiceStub,
    "pipeline": pipeline_pb2_grpc.PipelineServiceStub,
}
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
T = TypeVar("T")


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
        channel = grpc.insecure_channel(addr)
        _channels[addr] = grpcext.intercept_channel(channel, client_interceptor())
    return STUBS[service](_channels[addr])


def call(method: Callable[..., T], request: Any, *, timeout: float = 30.0, attempts: int = 5) -> T:
    """Call a unary RPC, retrying UNAVAILABLE with exponential backoff (at most `attempts`)."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or attempt == attempts:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def stream(method: Callable[..., Iterator[T]], request: Any, *, timeout: float | None = None) -> Iterator[T]:
    return method(request, timeout=timeout)


def close() -> None:
    for channel in _channels.values():
        channel.close()
    _channels.clear()
