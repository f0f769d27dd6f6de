"""Start-up of every gRPC service: health, reflection, error mapping, tracing, shutdown.

Calls need the bearer token and TLS the settings configure (core/auth.py).
Health reports SERVING for the whole server and each named service once the
servicers are registered, and NOT_SERVING while shutting down, so probes and
`slmops status` see the truth. Every RPC is counted and timed, and with
SLMOPS_METRICS_PORT set the metrics are served at /metrics on the service's
host (core/metrics.py), from start-up until the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from slmops.core import auth, tracing
from slmops.core.grpc_errors import ErrorInterceptor
from slmops.core.metrics import ServiceMetrics, lifecycles_of, port_setting

log = logging.getLogger(__name__)


@dataclass
class Registration:
    """One servicer and how to add it: (add_XServicer_to_server, servicer, full service name)."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    name: str


class RunningServer:
    def __init__(self, server: grpc.aio.Server, port: int, health_servicer: health.HealthServicer,
                 names: Sequence[str], on_stop: Sequence[Callable[[], Awaitable[None]]],
                 metrics: ServiceMetrics | None = None):  # fmt: skip
        self.server, self.port = server, port
        self._health, self._names, self._on_stop = health_servicer, names, on_stop
        self.metrics = metrics

    @property
    def metrics_port(self) -> int:
        """Where /metrics is served; 0 when it is not."""
        return self.metrics.port if self.metrics is not None else 0

    async def stop(self, grace: float = 5.0) -> None:
        for name in ("", *self._names):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for hook in self._on_stop:
            await hook()
        await self.server.stop(grace)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)


async def start_server(
    service: str,
    registrations: Sequence[Registration],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    metrics_port: int | None = None,
) -> RunningServer:
    """Start a grpc.aio server; port 0 picks a free one (see RunningServer.port).

    metrics_port: where /metrics is served (SLMOPS_METRICS_PORT when None; 0: not served).
    """
    tracing.setup_tracing(service)
    token = auth.server_token()
    serve_metrics_on = port_setting(metrics_port)  # a bad value stops the start, naming the variable
    metrics = ServiceMetrics(service, lifecycles_of(reg.servicer for reg in registrations))
    interceptors: list[Any] = [metrics.interceptor(), aio_server_interceptor(), ErrorInterceptor()]
    if token:
        interceptors.insert(2, auth.TokenInterceptor(token))
    server = grpc.aio.server(interceptors=interceptors)
    for reg in registrations:
        reg.add(reg.servicer, server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else _async_health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [reg.name for reg in registrations]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = auth.server_credentials()
    if credentials is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    if serve_metrics_on:
        metrics.serve(host, serve_metrics_on)
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "%s listening on %s:%d (%s, %s)",
        service,
        host,
        bound,
        "TLS" if credentials else "plain text",
        "bearer token required" if token else "no token",
    )
    return RunningServer(server, bound, health_servicer, names, on_stop, metrics)


def _async_health() -> Any:
    from grpc_health.v1 import _async

    return _async.HealthServicer()


async def serve_forever(running: RunningServer, ready_line: str | None = None) -> None:
    """Block until SIGTERM/SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_line:
        print(ready_line, flush=True)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
    tracing.shutdown_tracing()
