"""Watching a job from the terminal: one progress line per event, a live view, and the outcome.

A job's events are kept by its service from the first (sequence 1): Watch from
sequence 0 replays them all, then streams new ones until the job ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

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


def stream_events(
    watch: Callable[..., Any],
    job_id: str,
    on_event: Callable[[common_pb2.ProgressEvent], None],
    timeout: float | None = None,
) -> bool:
    """Hand every event of the job to on_event from its first, resuming after the last one seen when
    the stream breaks, until the job ends (True) or, given `timeout`, that many seconds pass (False)."""
    after = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(20):
        limit = {} if deadline is None else {"timeout": max(deadline - time.monotonic(), 0.05)}
        try:
            for event in watch(common_pb2.WatchJobRequest(id=job_id, after_sequence=after), **limit):
                after = event.sequence
                on_event(event)
            return True
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                return False
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return True


def watch_job(
    label: str,
    watch: Callable[..., Any],
    get: Callable[..., Any],
    job_id: str,
    out: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Any:
    """Stream a job's events until it finishes (resuming if the stream breaks); return the job."""
    stream_events(watch, job_id, lambda event: out(format_event(label, event)))
    return client.call(get, common_pb2.GetJobRequest(id=job_id))


class LiveView:
    """A job's state, progress bar and latest message, redrawn in place on a terminal; elsewhere
    (a pipe, a log) one progress line per event. Use as a context manager; `update` takes an event."""

    def __init__(self, label: str, out: TextIO | None = None):
        self.label, self.out = label, out if out is not None else sys.stderr
        self.progress: Progress | None = None
        if self.out.isatty():
            self.progress = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[state]}", markup=False),
                TextColumn("{task.fields[message]}", markup=False),  # a job's words, never markup
                console=Console(file=self.out, highlight=False, markup=False, emoji=False), auto_refresh=False,
            )  # fmt: skip
            self.task = self.progress.add_task(label, total=1.0, state="PENDING", message="")

    def __enter__(self) -> LiveView:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, event: common_pb2.ProgressEvent) -> None:
        if self.progress is None:
            print(format_event(self.label, event), file=self.out, flush=True)
            return
        message = f"{event.message} {format_metrics(event.metrics)}".strip()
        self.progress.update(self.task, completed=max(0.0, min(1.0, event.fraction)),
                             state=common_pb2.JobState.Name(event.state), message=message[:120])  # fmt: skip
        self.progress.refresh()
