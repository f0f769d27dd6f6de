"""Progress from inside a job, as lines the job service reads from the job's log.

A job entrypoint prints `SLMOPS_PROGRESS {json}` lines; the service tails the
Ray job's logs, parses them and stores them as ProgressEvents. The same works
on a laptop and in a cluster, with nothing shared but the log stream.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from slmops.core.errors import JobCancelled

PREFIX = "SLMOPS_PROGRESS "
RESULT_PREFIX = "SLMOPS_RESULT "


class Progress(Protocol):
    def __call__(self, fraction: float, message: str, **metrics: float) -> None: ...


def stdout_progress(fraction: float, message: str, **metrics: float) -> None:
    """Report progress from a job entrypoint (one log line)."""
    event = {
        "fraction": max(0.0, min(1.0, float(fraction))),
        "message": message,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "time": time.time(),
    }
    print(PREFIX + json.dumps(event), flush=True, file=sys.stdout)


def emit_result(result: dict[str, Any]) -> None:
    """Report a job's final result (a JSON object) as the last log line."""
    print(RESULT_PREFIX + json.dumps(result), flush=True, file=sys.stdout)


def null_progress(fraction: float, message: str, **metrics: float) -> None:
    """Progress sink for callers that do not watch."""


def parse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """('progress', event) or ('result', result) for a recognised line, else None."""
    for kind, prefix in (("progress", PREFIX), ("result", RESULT_PREFIX)):
        index = line.find(prefix)
        if index >= 0:
            try:
                return kind, json.loads(line[index + len(prefix) :])
            except json.JSONDecodeError:
                return None
    return None


def scaled(progress: Progress, start: float, end: float) -> Callable[..., None]:
    """A progress callback mapping a sub-task's 0..1 onto start..end of the whole."""

    def report(fraction: float, message: str, **metrics: float) -> None:
        progress(start + (end - start) * fraction, message, **metrics)

    return report


_cancellable = False


def cancel_on_sigterm(install: bool = False) -> None:
    """Make SIGTERM raise JobCancelled in this process (install: the job entrypoint), or do so again
    after something replaced the handler (ray.init installs its own); a no-op outside a job."""
    global _cancellable
    _cancellable = _cancellable or install
    if _cancellable:
        signal.signal(signal.SIGTERM, _cancelled)


def _cancelled(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise JobCancelled("the job was asked to stop")
