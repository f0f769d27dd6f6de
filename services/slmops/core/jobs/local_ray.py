"""A Ray head on this machine, owned by one process group so it stops exactly.

`ray start --head --block` stays in the foreground and takes its raylet, GCS
and dashboard down with it on SIGTERM; it runs in its own session, so stopping
the group stops this head and nothing else on the machine. Its temp dir (session
files, logs, sockets) is <data_dir>/ray/tmp, or a folder inside a fresh private
one from `tempfile.mkdtemp` when that path is too long for Ray's socket paths.
Ray opens its temp dir's folders to everyone (0777); the 0700 folder around
them keeps other users out, and the head runs with umask 077, so what it and
its jobs write is readable by this user only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from slmops.core.errors import Unavailable
from slmops.core.private_files import CHILD_UMASK, open_private, private_dir, tighten

_EXTRA_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRay:
    process: subprocess.Popen[bytes]
    gcs_port: int
    dashboard_port: int
    temp_dir: str
    log_path: Path
    temp_dir_owned: bool = False  # inside a mkdtemp folder: removed once the head has stopped

    @property
    def address(self) -> str:
        """The Jobs API address (RAY_ADDRESS for job clients)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def stop(self, timeout: float = 8.0) -> None:
        stop_group(self.process.pid, timeout, self.process)
        if self.temp_dir_owned:
            remove_temp_dir(self.temp_dir)


def stop_group(pid: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM a process group and wait for its leader; SIGKILL whatever is left after that."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None:
            if process.poll() is not None:
                break
        else:
            try:
                # Reap it if it is our own child (a zombie still answers kill(pid, 0)).
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.2)
    time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)  # stragglers that outlived the leader
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait()


def auth_env(data_dir: Path) -> dict[str, str]:
    """Token authentication for the local head: one secret per data dir, readable by its owner only.

    The head, the services and the jobs all get these variables, so every Ray
    call carries the token and nothing else on the machine can submit work.
    """
    token_path = data_dir / "ray" / "auth_token"
    if not token_path.exists():
        private_dir(token_path.parent)
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


# AF_UNIX paths hold 107 bytes on Linux; Ray's longest socket under its temp dir is
# /session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store.<n>.
SOCKET_PATH_MAX = 107
_SOCKET_TAIL = len("/session_2026-12-07_21-13-51_123456_4194304/sockets/plasma_store.99")
TEMP_PREFIX = "slmops-ray-"


def ray_temp_dir(data_dir: Path) -> tuple[str, bool]:
    """(the head's temp dir, whether it is one of its own to remove after the head stops).

    <data_dir>/ray/tmp when Ray's socket paths fit under it, else `ray` inside
    a fresh private folder with an unpredictable name (tempfile.mkdtemp, 0700).
    """
    under_data_dir = data_dir / "ray" / "tmp"
    if len(str(under_data_dir).encode()) + _SOCKET_TAIL <= SOCKET_PATH_MAX:
        private_dir(data_dir / "ray")
        return str(private_dir(under_data_dir)), False
    return os.path.join(tempfile.mkdtemp(prefix=TEMP_PREFIX), "ray"), True


def prune_sessions(temp_dir: str, keep: int = 3) -> None:
    """Drop the session folders (sockets, logs) of all but the `keep` newest earlier heads, so a temp dir
    under the data dir does not grow with every start; their names begin with the start time."""
    sessions = sorted(p for p in Path(temp_dir).glob("session_2*") if p.is_dir() and not p.is_symlink())
    for old in sessions[: max(len(sessions) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def remove_temp_dir(temp_dir: str) -> None:
    """Remove a head's own temp dir with the mkdtemp folder around it (anything else is left)."""
    holder = Path(temp_dir).parent
    if holder.name.startswith(TEMP_PREFIX):
        shutil.rmtree(holder, ignore_errors=True)


def head_command(
    temp_dir: str,
    *,
    gcs_port: int,
    dashboard_port: int,
    num_cpus: int | None = None,
    object_store_bytes: int = 1 << 30,
) -> list[str]:
    """The `ray start` arguments of a local head on loopback, every port chosen, its temp dir temp_dir."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    args = [
        ray_bin,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        # Ray's other fixed ports (agent 52365, client 10001, ...) would clash with any
        # other Ray on the machine: every one of them gets a free port instead.
        *(f"--{flag}={free_port()}" for flag in _EXTRA_PORT_FLAGS),
    ]
    if num_cpus:
        args.append(f"--num-cpus={num_cpus}")
    return args


JOB_STOP_GRACE_S = 10


def start_head(
    data_dir: Path,
    *,
    gcs_port: int = 0,
    dashboard_port: int = 0,
    num_cpus: int | None = None,
    object_store_bytes: int = 1 << 30,
    timeout: float = 90.0,
) -> LocalRay:
    """Start a Ray head (GCS, raylet, dashboard with the Jobs API) and wait until jobs can be sent."""
    gcs_port = gcs_port or free_port()
    dashboard_port = dashboard_port or free_port()
    temp_dir, owned = ray_temp_dir(data_dir)
    prune_sessions(temp_dir)
    log_path = private_dir(data_dir / "logs") / "ray-head.log"
    args = head_command(temp_dir, gcs_port=gcs_port, dashboard_port=dashboard_port, num_cpus=num_cpus,
                        object_store_bytes=object_store_bytes)  # fmt: skip
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(auth_env(data_dir))
    # A stopped job gets this long after SIGTERM to keep what it finished (a synthesis job seals it).
    env["RAY_JOB_STOP_WAIT_TIME_S"] = str(JOB_STOP_GRACE_S)
    # The job entrypoints run `python`; make it this environment's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with os.fdopen(open_private(log_path), "ab") as log_file:
        process = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=CHILD_UMASK,
        )
    head = LocalRay(process, gcs_port, dashboard_port, temp_dir, log_path, owned)
    try:
        wait_for_jobs_api(head.address, timeout, process)
    except Exception:
        head.stop()
        raise
    tighten(Path(temp_dir))  # the folders Ray opened to everyone (inside a private one anyway)
    return head


def wait_for_jobs_api(address: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise Unavailable(f"the Ray head exited with code {process.returncode}")
        try:
            # 401 means up with token authentication on; the Jobs client sends the token.
            if httpx.get(f"{address}/api/version", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise Unavailable(f"the Ray Jobs API at {address} did not come up within {timeout:.0f}s")
