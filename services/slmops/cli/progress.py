"""Watching a job from the terminal: one progress line per event, and the outcome."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import grpc

from slmops.api.v1 import common_pb2
from slmops.cli import client

TERMINAL = {common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED}


def bar(fraction: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_event(label: str, event: common_pb2.ProgressEvent) -> str:
    state = common_pb2.JobState.Name(event.state)
    metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
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
