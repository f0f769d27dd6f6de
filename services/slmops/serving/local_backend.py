"""The local serving backend: one predictor process per deployment on this machine.

Each predictor is `python -m slmops.predictor` (the same command `slmops serve`
runs) in its own session, logging to <data_dir>/logs/predictor-<name>.log. It
is ready when it prints its READY line; start-up failures come back with the
end of its log, never as a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from slmops.core.errors import Unavailable
from slmops.core.local_ray import free_port, stop_group

READY_PREFIX = "SLMOPS_PREDICTOR_READY "


@dataclass
class Predictor:
    pid: int
    port: int
    url: str
    log_path: Path
    grpc_port: int = 0  # OIP v2 gRPC


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def predictor_command(model_dir: str, name: str, host: str, port: int, grpc_port: int) -> list[str]:
    return [
        sys.executable, "-m", "slmops.predictor",
        "--model-dir", model_dir, "--name", name, "--host", host, "--http-port", str(port),
        "--grpc-port", str(grpc_port),
    ]


def start_predictor(
    name: str,
    model_dir: str,
    logs_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    traceparent: str = "",
    timeout: float = 180.0,
) -> Predictor:
    """Start a predictor and wait until it answers; raise Unavailable with its log if it cannot."""
    port = port or free_port()
    grpc_port = free_port()
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"predictor-{name}.log"
    env = dict(os.environ, TRACEPARENT=traceparent, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log_file:
        offset = log_file.tell()
        process = subprocess.Popen(
            predictor_command(model_dir, name, host, port, grpc_port),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            if line.startswith(READY_PREFIX):
                url = line[len(READY_PREFIX) :].strip()
                return Predictor(process.pid, port, url, log_path, grpc_port)
        if process.poll() is not None:
            raise Unavailable(
                f"predictor for {name!r} exited with code {process.returncode}:\n{_tail(log_path)}"
            )
        time.sleep(0.3)
    stop_group(process.pid, 5.0, process)
    raise Unavailable(f"predictor for {name!r} was not ready within {timeout:.0f}s:\n{_tail(log_path)}")


def stop_predictor(pid: int, timeout: float = 10.0) -> None:
    stop_group(pid, timeout)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_alive(pid: int, url: str) -> bool:
    """True when the process exists and its server says it is ready."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False
