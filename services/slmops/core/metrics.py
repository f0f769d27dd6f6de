"""Prometheus metrics of one gRPC service, served at /metrics on SLMOPS_METRICS_PORT.

Each running server has its own `ServiceMetrics` with its own registry (never
prometheus_client's global one), so several services in one process (tests,
benchmarks) keep their numbers apart. The series:

- `slmops_rpc_requests_total{service,method,code}`: finished RPCs by full
  method name (`slmops.v1.TrainingService/GetTrainingJob`) and gRPC status
  code name (`OK`, `INVALID_ARGUMENT`, ...). Only methods the server has are
  counted, so a caller cannot grow the label set.
- `slmops_rpc_duration_seconds{service,method}`: how long each RPC took (a
  Watch stream: until it ended).
- `slmops_jobs{service,state}`: records of the service's lifecycles in the
  job store by state, read at scrape time. Replicas on one database each
  report the whole store, so aggregate them with max, not sum.
- `slmops_lease_takeovers_total{service}`: records this replica took over
  from another whose lease ran out (a replica that died).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slmops.core import settings
from slmops.core.grpc_handlers import wrap_handler
from slmops.core.jobs.lifecycle import Lifecycle

log = logging.getLogger(__name__)

DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)


def port_setting(override: int | None = None) -> int:
    """The /metrics port (0: none); ValueError naming SLMOPS_METRICS_PORT when it is not a port."""
    text = settings.get("metrics_port", None if override is None else str(override)).strip() or "0"
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{settings.VARS['metrics_port'].env} must be a port number (0: off), not {text!r}")
    return port


class ServiceMetrics:
    """The metrics of one service: RPC counters, job gauges, and the HTTP endpoint serving them."""

    def __init__(self, service: str, lifecycles: Sequence[Lifecycle] = ()):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("slmops_rpc_requests", "RPCs the service answered, by method and status code.",
                                ["service", "method", "code"], registry=self.registry)  # fmt: skip
        self.duration = Histogram("slmops_rpc_duration_seconds", "How long RPCs took, by method.",
                                  ["service", "method"], buckets=DURATION_BUCKETS, registry=self.registry)  # fmt: skip
        self.registry.register(_LifecycleCollector(service, lifecycles))
        self._http: Any = None
        self.port = 0

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return MetricsInterceptor(self)

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(self.service, method, code.name).inc()
        self.duration.labels(self.service, method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port in a background thread; the port it listens on."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        self.port = int(server.server_address[1])
        log.info("%s metrics at http://%s:%d/metrics", self.service, host, self.port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def lifecycles_of(servicers: Iterable[Any]) -> list[Lifecycle]:
    """The lifecycles the servicers drive (an attribute holding a Lifecycle), each once."""
    found: list[Lifecycle] = []
    for servicer in servicers:
        for value in getattr(servicer, "__dict__", {}).values():
            if isinstance(value, Lifecycle) and all(value is not known for known in found):
                found.append(value)
    return found


class _LifecycleCollector(Collector):
    """slmops_jobs and slmops_lease_takeovers_total, read from the lifecycles when scraped."""

    def __init__(self, service: str, lifecycles: Sequence[Lifecycle]):
        self.service, self.lifecycles = service, list(lifecycles)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("slmops_jobs", "", labels=["service", "state"]),
                CounterMetricFamily("slmops_lease_takeovers", "", labels=["service"])]  # fmt: skip

    def collect(self) -> Iterable[Metric]:
        takeovers = CounterMetricFamily(
            "slmops_lease_takeovers",
            "Records this replica took over from a replica whose lease ran out.",
            labels=["service"],
        )
        takeovers.add_metric([self.service], sum(lc.takeovers for lc in self.lifecycles))
        counts: dict[str, int] = {}
        try:
            for lc in self.lifecycles:
                # States every kind reaches show 0 rather than nothing (a deployment never succeeds).
                for state in (*lc.states.active, lc.states.failed, lc.states.cancelled):
                    counts.setdefault(state, 0)
                for state, n in lc.store.count_by_state(lc.kind).items():
                    counts[state] = counts.get(state, 0) + n
        except Exception as exc:  # the store is down: the other series are still worth a scrape
            log.warning("%s metrics: jobs by state unavailable: %s", self.service, type(exc).__name__)
            counts = {}
        if counts:
            jobs = GaugeMetricFamily("slmops_jobs", "Records in the service's job store by state.",
                                     labels=["service", "state"])  # fmt: skip
            for state, n in sorted(counts.items()):
                jobs.add_metric([self.service, state], n)
            yield jobs
        yield takeovers


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by the status code it ended with; put first, it sees the final code."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method.lstrip("/")
        return wrap_handler(
            handler,
            unary=lambda inner: self._unary(inner, method),
            stream=lambda inner: self._stream(inner, method),
        )

    def _unary(self, inner: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._observing(method, context):
                return await inner(request, context)

        return call

    def _stream(self, inner: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._observing(method, context):
                async for item in inner(request, context):
                    yield item

        return call

    @contextlib.contextmanager
    def _observing(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Times the block and counts it under the code the RPC ended with."""
        start, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
        try:
            yield
            code = _code(context, grpc.StatusCode.OK)
        except grpc.aio.AbortError:
            code = _code(context, grpc.StatusCode.UNKNOWN)
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN
            raise
        finally:
            self.metrics.observe(method, code, time.perf_counter() - start)


def _code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the handler set or aborted with (grpc.aio keeps it on the context), else default."""
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), default)
