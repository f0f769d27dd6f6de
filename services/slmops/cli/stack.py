"""The local stack: a Ray head and every service on this machine, under one data dir.

`up` starts them in the background (each in its own process group, logging to
<data_dir>/logs, rotated at SLMOPS_LOG_MAX_BYTES) and records what it started in
<data_dir>/stack.json; `down` stops exactly those process groups; `status` asks
each one for its health. The data dir is this user's only: folders 0700, files
0600, the processes started with umask 077; `up` tightens one made more open.

The stack's predictors require an API key: SLMOPS_PREDICTOR_API_KEY_FILE when
set, else <data_dir>/auth/predictor-key (0600). The Ray head (and so every job)
and the services get the variable; `down` leaves the file, like the token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.core import auth, predictor_key, settings
from slmops.core.errors import Unavailable
from slmops.core.jobs.local_ray import auth_env, free_port, remove_temp_dir, start_head, stop_group
from slmops.core.private_files import CHILD_UMASK, open_private, private_dir, tighten, write_private

SERVICES = ("synthesis", "training", "conversion", "serving", "evaluation", "pipeline")
READY_PREFIX = "SLMOPS_SERVICE_READY "


def predictor_key_env(data_dir: Path) -> dict[str, str]:
    """SLMOPS_PREDICTOR_API_KEY_FILE for the stack: the configured file, else <data_dir>/auth/predictor-key
    (0600, made with a fresh random key if missing)."""
    path = predictor_key.configured_file() or str(predictor_key.ensure(data_dir))
    return {settings.VARS["predictor_api_key_file"].env: path}


@contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """os.environ with `extra` while the block runs (the Ray head starts from this process's env)."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class StartedService:
    name: str
    pid: int
    address: str
    log: str


def _stack_path(data_dir: Path) -> Path:
    return data_dir / "stack.json"


def read(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads(_stack_path(data_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _start_service(
    name: str, port: int, env: dict[str, str], logs: Path, timeout: float = 60.0
) -> StartedService:
    """Start one service; it logs to <logs>/<name>.log itself (rotated), where its READY line shows too.

    What it writes before its logging starts (a crash at import) goes to the same file.
    """
    log_path = logs / f"{name}.log"
    with os.fdopen(open_private(log_path), "ab") as log_file:
        offset = log_file.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", f"slmops.{name}", "--host", "127.0.0.1", "--port", str(port),
             "--log-file", str(log_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=CHILD_UMASK,
        )  # fmt: skip
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path, "rb") as fh:
            fh.seek(offset if os.fstat(fh.fileno()).st_size >= offset else 0)  # 0: rotated meanwhile
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            if READY_PREFIX in line:  # the service's log prefixes it with a time and a level
                return StartedService(name, process.pid, line.split()[-1], str(log_path))
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-5:])
            raise Unavailable(
                f"the {name} service exited with code {process.returncode} ({log_path}):\n{tail}"
            )
        time.sleep(0.2)
    stop_group(process.pid, 5.0, process)
    raise Unavailable(f"the {name} service did not start within {timeout:.0f}s; see {log_path}")


def up(
    data_dir: Path,
    *,
    free_ports: bool = False,
    num_cpus: int | None = None,
    say: Any = print,
    token: bool = True,
) -> dict[str, Any]:
    """Start the Ray head and the services; returns the stack record.

    token: the services require a bearer token (SLMOPS_AUTH_TOKEN_FILE when
    set, else <data_dir>/auth/token, made readable by this user only), which
    this user's CLI reads from there.
    """
    private_dir(data_dir)
    existing = read(data_dir)
    if existing and _pid_alive(int(existing.get("ray", {}).get("pid", 0))):
        raise Unavailable(f"a stack is already running for {data_dir}; run `slmops down` first")
    tightened = tighten(data_dir)
    logs = private_dir(data_dir / "logs")
    say(
        f"starting Ray head (data dir {data_dir}"
        + (f"; made {tightened} paths in it readable by this user only)" if tightened else ")")
    )
    key_env = predictor_key_env(data_dir)
    with _environ(key_env):  # the jobs call the stack's predictors with the key
        head = start_head(data_dir, num_cpus=num_cpus)
    record: dict[str, Any] = {
        "data_dir": str(data_dir),
        "ray": {"pid": head.process.pid, "address": head.address, "log": str(head.log_path),
                "temp_dir": head.temp_dir, "temp_dir_owned": head.temp_dir_owned},
        "services": {},
    }  # fmt: skip
    write_private(_stack_path(data_dir), json.dumps(record, indent=2))
    env = dict(os.environ, SLMOPS_DATA_DIR=str(data_dir), RAY_ADDRESS=head.address, PYTHONUNBUFFERED="1")
    env.update(auth_env(data_dir))
    env.update(key_env)
    token_env = settings.VARS["auth_token_file"].env
    if not token:
        env.pop(token_env, None)
    elif not env.get(token_env):
        env[token_env] = str(auth.ensure_token_file(data_dir / auth.TOKEN_FILE))
    record["auth"] = {
        "token_file": env.get(token_env, ""),
        "predictor_key_file": next(iter(key_env.values())),
    }
    ports = {
        name: free_port() if free_ports else int(settings.service_addr(name).rsplit(":", 1)[1])
        for name in SERVICES
    }
    for name in SERVICES:
        env[settings.VARS[f"{name}_addr"].env] = f"127.0.0.1:{ports[name]}"
    try:
        for name in SERVICES:
            started = _start_service(name, ports[name], env, logs)
            record["services"][name] = {"pid": started.pid, "address": started.address, "log": started.log}
            write_private(_stack_path(data_dir), json.dumps(record, indent=2))
            say(f"  {name:<11} listening on {started.address}")
    except Exception:
        down(data_dir, say=lambda *_: None)
        raise
    say(f"  {'ray':<11} jobs API at {head.address}")
    say(f"  {'predictors':<11} require the API key in {record['auth']['predictor_key_file']}")
    return record


def down(data_dir: Path, say: Any = print) -> int:
    """Stop what `up` started for this data dir; returns how many process groups were stopped."""
    record = read(data_dir)
    stopped = 0
    # Services first (serving stops its predictors), then the Ray head they submit to.
    for name, info in reversed(list(record.get("services", {}).items())):
        pid = int(info.get("pid", 0))
        if pid and _pid_alive(pid):
            stop_group(pid, 20.0)
            stopped += 1
            say(f"stopped {name}")
    ray_pid = int(record.get("ray", {}).get("pid", 0))
    if ray_pid and _pid_alive(ray_pid):
        stop_group(ray_pid, 8.0)
        stopped += 1
        say("stopped Ray head")
    if record.get("ray", {}).get("temp_dir_owned"):
        remove_temp_dir(str(record["ray"].get("temp_dir", "")))
    if record:
        _stack_path(data_dir).unlink(missing_ok=True)
    return stopped


def health(address: str, timeout: float = 3.0) -> str:
    """SERVING, NOT_SERVING, or why it could not be asked."""
    credentials = auth.channel_credentials()
    opened = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials, auth.channel_options())
    )
    with opened as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"DOWN ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def status(data_dir: Path) -> list[tuple[str, str, str]]:
    """(component, address, health) for the stack of this data dir (or the configured addresses)."""
    from slmops.cli import client

    rows: list[tuple[str, str, str]] = []
    record = read(data_dir)
    for name in SERVICES:
        addr = client.address(name)
        rows.append((name, addr, health(addr)))
    ray_addr = record.get("ray", {}).get("address") or settings.ray_address()
    try:
        import httpx

        code = httpx.get(f"{ray_addr}/api/version", timeout=3).status_code
        rows.append(("ray", ray_addr, "SERVING" if code < 500 else f"DOWN (HTTP {code})"))
    except Exception as exc:  # connection refused, timeout
        rows.append(("ray", ray_addr, f"DOWN ({type(exc).__name__})"))
    return rows
