"""Watching a job from the terminal: one progress line per event, and the outcome."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from slmops.api.v1 import common_pb2
from slmops.cli import client

TERMINAL = {common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED}


def bar(fraction: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def duration(seconds: float) -> str:
    """1:05, or 1:02:03 past an hour."""
    minutes, secs = divmod(int(round(max(0.0, seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# Metrics every stage may report, in the order and form a progress line shows them.
KNOWN_METRICS: dict[str, Callable[[float], str]] = {
    "step": lambda v: f"step {v:.0f}",
    "train_loss": lambda v: f"loss {v:.4f}",
    "eval_loss": lambda v: f"val_loss {v:.4f}",
    "tokens_per_second": lambda v: f"{v:,.0f} tok/s",
    "eta_seconds": lambda v: f"ETA {duration(v)}",
}


def format_metrics(metrics: Mapping[str, float]) -> str:
    """Known metrics in their own form and order (step 12 loss 1.2345 ...), then the rest as key=value."""
    known = [KNOWN_METRICS[k](metrics[k]) for k in KNOWN_METRICS if k in metrics]
    rest = [f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k not in KNOWN_METRICS]
    return " ".join(known + rest)


def format_event(label: str, event: common_pb2.ProgressEvent) -> str:
    state = common_pb2.JobState.Name(event.state)
    metrics = format_metrics(event.metrics)
    return f"  {label:<11} {bar(event.fraction)} {event.fraction * 100:5.1f}% {state:<9} {event.message} {metrics}".rstrip()


def watch_job(
    label: str,
    watch: Callable[..., Any],
    get: Callable[..., Any],
    job_id: str,
    out: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Any:
    """Stream a job's events until it finishes (resuming if the stream breaks); return the job."""
    after = 0
    for _ in range(20):
        try:
            for event in watch(common_pb2.WatchJobRequest(id=job_id, after_sequence=after)):
                after = event.sequence
                out(format_event(label, event))
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return client.call(get, common_pb2.GetJobRequest(id=job_id))
