"""OpenTelemetry set-up shared by every process: services, Ray jobs, predictors, the CLI.

Spans go to an OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT is set, else to
one JSONL file under the data dir (one span per line, readable by this user
only, rotated at SLMOPS_LOG_MAX_BYTES: `read_spans` reads the rotated files
too), so a local run can be inspected with nothing else running. Trace context crosses process boundaries
as a W3C `traceparent` string: gRPC metadata (instrumentation), the
TRACEPARENT environment variable of Ray jobs and predictors, and HTTP headers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from slmops.core import private_files, settings

TRACEPARENT_ENV = "TRACEPARENT"
log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: str | None = None


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to a JSONL file, rotated at max_bytes; safe across processes (whole lines
    under a lock file)."""

    def __init__(self, path: Path, max_bytes: int | None = None):
        self.path = path
        try:
            self.max_bytes = max_bytes or private_files.log_max_bytes()
        except ValueError as exc:  # the CLI, a job or a predictor still runs; a service refuses to start
            log.warning("%s; the span file rotates at the default size", exc)
            self.max_bytes = int(settings.VARS["log_max_bytes"].default)
        private_files.private_dir(self.path.parent)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines: list[bytes] = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_span_id": format(parent.span_id, "016x") if parent else None,
                        "service": span.resource.attributes.get("service.name", ""),
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
                    }
                ).encode()
                + b"\n"
            )
        private_files.append_lines(self.path, lines, self.max_bytes)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _plain(value: object) -> object:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return list(value) if isinstance(value, (list, tuple)) else str(value)


def spans_file() -> Path:
    return settings.data_dir() / "traces" / "spans.jsonl"


def read_spans(path: Path | None = None) -> list[dict[str, object]]:
    """Every span in the span file and its rotated files, oldest first (lines cut short are skipped)."""
    spans: list[dict[str, object]] = []
    for part in private_files.rotated_files(path or spans_file()):
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def setup_tracing(service_name: str) -> None:
    """Install the tracer provider for this process once (later calls are no-ops)."""
    global _configured
    with _lock:
        if _configured:
            return
        resource = Resource.create({"service.name": f"slmops-{service_name}"})
        provider = TracerProvider(resource=resource)
        if settings.get("otlp_endpoint"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(
                BatchSpanProcessor(JsonlSpanExporter(spans_file()), schedule_delay_millis=500)
            )
        trace.set_tracer_provider(provider)
        _configured = service_name


def shutdown_tracing() -> None:
    """Flush pending spans (call before a process exits)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush:
        flush()


def tracer(name: str = "slmops") -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def current_traceparent() -> str:
    """The W3C traceparent of the current span, or '' when there is none."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str | None) -> context.Context:
    if not traceparent:
        return context.get_current()
    return propagate.extract({"traceparent": traceparent})


@contextmanager
def span_from(
    name: str, traceparent: str | None = None, attributes: Mapping[str, object] | None = None
) -> Iterator[trace.Span]:
    """A span whose parent is the given traceparent (or the current context)."""
    ctx = context_from_traceparent(traceparent)
    with tracer().start_as_current_span(name, context=ctx, attributes=dict(attributes or {})) as span:
        yield span


@contextmanager
def span_from_env(name: str, attributes: Mapping[str, object] | None = None) -> Iterator[trace.Span]:
    """A span continuing the trace handed over in the TRACEPARENT environment variable."""
    with span_from(name, os.environ.get(TRACEPARENT_ENV), attributes) as span:
        yield span


def http_headers() -> dict[str, str]:
    """Headers that carry the current trace to an HTTP server (W3C traceparent)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
