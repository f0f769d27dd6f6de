"""The local backend: revisions as supervised predictor processes, one router per deployment.

Each revision runs `python -m slmops.predictor` in its own session on a port of
its own (kept across restarts); the deployment's router (serving/router.py)
holds the one URL callers use and splits requests between revisions.

What is asked for (the desired split) and what the router does (the effective
split) differ while revisions start: the router only ever sends requests to
revisions whose predictors answer readiness, and keeps the split it had until
the revisions asked for are ready. So a canary takes its share once it is up,
a promotion or a rollback switches only when its target answers, and no request
is sent to a predictor that is still loading. A revision that leaves the split
keeps its predictor until the requests it is answering have finished.

`status()` is also the supervisor: called every few seconds by the serving
service, it checks each predictor, starts again (with backoff) one that died
after it had been ready or that missed `ready_misses` readiness probes in a
row (a single slow probe is a busy predictor, not a broken one), fails a
revision whose predictor exits before it was ever ready, and stops what no
longer serves. A pid is signalled only while it is still the process that was
started (same creation time), never a stranger that reused the number.

A model on an object store is served from its checked copy in this machine's
cache (core/artifact_cache.py), fetched when the deployment is validated and
again if the cache lost it. Before each start of a predictor the files it
loads are checked against their artifact's manifest; a revision whose files
changed since they were sealed FAILS, naming them, and is never started.

With the predictors' API key configured (SLMOPS_PREDICTOR_API_KEY_FILE), each
predictor gets `--api-key-file` and each router requires the same key; both
take bodies up to the same `max_body_bytes`.

Each predictor also serves OIP v2 gRPC on a port of its own (kept across
restarts; its `grpc_address`), and each deployment has a gRPC router
(serving/grpc_router.py) on a stable port beside its HTTP router, drawing from
the same split with the same key and body limit. The gRPC router's port is
kept in every revision's runtime (`router_grpc_port`), so `restore` listens on
it again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slmops.core import artifacts, predictor_key
from slmops.core.errors import Conflict, InvalidSpec, NotFound, SlmopsError
from slmops.core.jobs.local_ray import free_port, stop_group
from slmops.serving.backends import (
    DEPLOYING,
    FAILED,
    READY,
    RETIRED,
    BackendStatus,
    PredictorLimits,
    Revision,
    RevisionStatus,
    split,
)
from slmops.serving.backends.predictor_process import answers as _answers
from slmops.serving.backends.predictor_process import created as _created
from slmops.serving.backends.predictor_process import is_ours as _is_ours
from slmops.serving.backends.predictor_process import model_dir as _model_dir
from slmops.serving.backends.predictor_process import tail as _tail
from slmops.serving.grpc_router import GrpcRouterServer, serve_grpc_router
from slmops.serving.router import (
    BODY_TIMEOUT_S,
    Route,
    Router,
    RouterServer,
    default_max_body_bytes,
    serve_router,
)
from slmops.serving.validation import check_artifact_files

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
START_TIMEOUT_S = 180.0  # a predictor not ready by then has failed to start
DRAIN_S = 120.0  # how long a revision that left the split may finish its requests
READY_TIMEOUT_S = 2.0  # one readiness probe's timeout
READY_MISSES = 3  # readiness probes missed in a row before a predictor that was ready is started again


@dataclass
class _Process:
    """One revision's predictor: what it runs, where, and how it is doing."""

    revision: Revision
    model_dir: str
    port: int
    log_path: Path
    grpc_port: int = 0  # the predictor's OIP v2 gRPC port
    pid: int = 0
    created: float = 0.0  # the process's creation time: the pid is still ours while it matches
    popen: subprocess.Popen[bytes] | None = None
    state: str = DEPLOYING
    reason: str = ""
    ever_ready: bool = False
    failures: int = 0
    misses: int = 0  # readiness probes missed in a row since it was last ready
    retry_at: float = 0.0
    launched_at: float = 0.0
    left_split_at: float = 0.0

    def runtime(self) -> dict[str, Any]:
        return {"pid": self.pid, "created": self.created, "port": self.port, "grpc_port": self.grpc_port,
                "log": str(self.log_path), "ever_ready": self.ever_ready}  # fmt: skip


@dataclass
class _Deployment:
    name: str
    server: RouterServer
    grpc: GrpcRouterServer
    processes: dict[int, _Process] = field(default_factory=dict)
    serving: int = 0  # the rolled-out revision
    latest: int = 0
    percent: int = 100  # the latest revision's share while it is a canary
    effective: dict[int, int] = field(default_factory=dict)

    @property
    def router(self) -> Router:
        return self.server.router

    def desired(self) -> dict[int, int]:
        return split(self.serving, self.latest, self.percent)


class LocalBackend:
    """Deployments as predictor processes on this machine, each behind its own router.

    `program` is the command that runs a predictor (its flags are appended);
    `max_body_bytes` (default: the predictor's own) bounds request bodies at
    the routers and the predictors alike.
    """

    checks_files = True  # a revision's files are checked against their manifest before each start

    def __init__(self, logs_dir: Path, host: str = "127.0.0.1", *, start_timeout_s: float = START_TIMEOUT_S,
                 drain_s: float = DRAIN_S, ready_timeout_s: float = READY_TIMEOUT_S,
                 ready_misses: int = READY_MISSES, max_body_bytes: int | None = None,
                 body_timeout_s: float = BODY_TIMEOUT_S, program: list[str] | None = None):  # fmt: skip
        self.logs_dir, self.host = logs_dir, host
        self.start_timeout_s, self.drain_s = start_timeout_s, drain_s
        self.ready_timeout_s, self.ready_misses = ready_timeout_s, max(1, ready_misses)
        self.max_body_bytes = max_body_bytes if max_body_bytes is not None else default_max_body_bytes()
        self.body_timeout_s = body_timeout_s
        self.program = program or [sys.executable, "-m", "slmops.predictor"]
        # Predictors bound to every interface are reached on loopback.
        self.connect_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        self._lock = threading.RLock()
        self._deployments: dict[str, _Deployment] = {}

    # -- the protocol ---------------------------------------------------------

    def apply(self, name: str, revision: Revision, record_dir: Path | None = None) -> dict[str, Any]:
        """Start `revision`'s predictor; at 100 percent it replaces the serving revision once it is ready."""
        with self._lock:
            deployment = self._deployments.get(name) or self._open(name, revision.port)
            deployment.router.max_body_bytes = revision.limits.max_body_bytes or self.max_body_bytes
            process = deployment.processes.get(revision.number)
            if process is None:
                process = deployment.processes[revision.number] = self._process(name, revision, 0, 0)
            process.revision = revision
            if process.state in (RETIRED, FAILED):
                process.state, process.reason, process.failures, process.retry_at = DEPLOYING, "", 0, 0.0
            deployment.latest = revision.number
            if revision.traffic_percent >= 100 or not deployment.serving:
                deployment.serving, deployment.percent = revision.number, 100
            else:
                deployment.percent = revision.traffic_percent
            self._reconcile(deployment)
            return {
                "url": deployment.server.url,
                "revision_url": self._url(process.port),
                "grpc_address": deployment.grpc.address,
                **self._runtime(deployment, process),
            }

    def set_traffic(self, name: str, percent: int, record_dir: Path | None = None) -> None:
        if not 0 <= percent <= 100:
            raise InvalidSpec("traffic_percent", f"must be between 0 and 100, not {percent}")
        with self._lock:
            deployment = self._get(name)
            if percent >= 100:
                deployment.serving, deployment.percent = deployment.latest, 100
            else:
                deployment.percent = percent
            self._reconcile(deployment)

    def promote(self, name: str, record_dir: Path | None = None) -> None:
        self.set_traffic(name, 100)

    def rollback(self, name: str, record_dir: Path | None = None) -> None:
        self.set_traffic(name, 0)

    def delete(self, name: str) -> None:
        with self._lock:
            deployment = self._deployments.pop(name, None)
        if deployment is None:
            return
        deployment.server.stop()
        deployment.grpc.stop()
        for process in deployment.processes.values():
            self._stop(process)

    def status(self, name: str) -> BackendStatus:
        with self._lock:
            deployment = self._get(name)
        self._check_readiness(deployment)  # HTTP calls, outside the lock
        with self._lock:
            self._reconcile(deployment)
            return self._status(deployment)

    def restore(self, name: str, revisions: list[Revision], runtime: dict[int, dict[str, Any]],
                serving: int, latest: int, percent: int) -> None:  # fmt: skip
        """Take a recorded deployment over: adopt its live predictors, start those that should run."""
        with self._lock:
            if name in self._deployments:
                return
            port = next((r.port for r in revisions if r.number == latest), 0)
            grpc_port = max((int(seen.get("router_grpc_port", 0)) for seen in runtime.values()), default=0)
            deployment = self._open(name, port, grpc_port)
            limits = next((r.limits for r in revisions if r.number == latest), PredictorLimits())
            deployment.router.max_body_bytes = limits.max_body_bytes or self.max_body_bytes
            for revision in revisions:
                seen = runtime.get(revision.number, {})
                process = self._process(
                    name, revision, int(seen.get("port", 0)), int(seen.get("grpc_port", 0))
                )
                process.ever_ready = bool(seen.get("ever_ready"))
                pid, created = int(seen.get("pid", 0)), float(seen.get("created", 0.0))
                if pid and _is_ours(pid, created):
                    process.pid, process.created, process.launched_at = pid, created, time.monotonic()
                    log.info(
                        "deployment %s: adopted revision %d's predictor (pid %d)", name, revision.number, pid
                    )
                deployment.processes[revision.number] = process
            deployment.serving, deployment.latest, deployment.percent = serving, latest, percent
            self._reconcile(deployment)

    def close(self, stop_predictors: bool = True) -> None:
        """Stop every router and, unless told not to, every predictor (restore() brings them back)."""
        with self._lock:
            deployments, self._deployments = list(self._deployments.values()), {}
        for deployment in deployments:
            deployment.server.stop()
            deployment.grpc.stop()
            if stop_predictors:
                for process in deployment.processes.values():
                    self._stop(process)

    # -- supervision ----------------------------------------------------------

    def _open(self, name: str, port: int, grpc_port: int = 0) -> _Deployment:
        key = predictor_key.read()
        router = Router(api_key=key, max_body_bytes=self.max_body_bytes,
                        body_timeout_s=self.body_timeout_s)  # fmt: skip
        try:
            server = serve_router(self.host, port, router)
        except OSError as exc:
            raise Conflict(f"deployment {name!r}: its router cannot listen on port {port}: {exc}") from None
        try:
            grpc_server = serve_grpc_router(self.host, grpc_port, router, api_key=key)
        except OSError as exc:
            server.stop()
            raise Conflict(
                f"deployment {name!r}: its gRPC router cannot listen on port {grpc_port}: {exc}"
            ) from None
        deployment = _Deployment(name, server, grpc_server)
        self._deployments[name] = deployment
        return deployment

    def _get(self, name: str) -> _Deployment:
        deployment = self._deployments.get(name)
        if deployment is None:
            raise NotFound("deployment running on this service", name)
        return deployment

    def _process(self, name: str, revision: Revision, port: int, grpc_port: int) -> _Process:
        return _Process(revision, str(_model_dir(revision)), port or free_port(),
                        self.logs_dir / f"predictor-{name}-{revision.number}.log",
                        grpc_port or free_port())  # fmt: skip

    def _url(self, port: int) -> str:
        return f"http://{self._address(port)}"

    def _address(self, port: int) -> str:
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"{host}:{port}"

    def _runtime(self, deployment: _Deployment, process: _Process) -> dict[str, Any]:
        return {**process.runtime(), "router_grpc_port": deployment.grpc.port}

    def _check_readiness(self, deployment: _Deployment) -> None:
        for process in list(deployment.processes.values()):
            if process.pid and self._alive(process):
                ready = _answers(self._url(process.port), self.ready_timeout_s)
                with self._lock:
                    if ready:
                        if process.state != READY:
                            log.info(
                                "deployment %s: revision %d ready", deployment.name, process.revision.number
                            )
                        process.state, process.reason, process.ever_ready = READY, "", True
                        process.failures = process.misses = 0
                    elif process.state == READY:  # it serves on until it misses `ready_misses` in a row
                        process.misses += 1
                        log.warning("deployment %s: revision %d missed its readiness probe (%d in a row)",
                                    deployment.name, process.revision.number, process.misses)  # fmt: skip

    def _reconcile(self, deployment: _Deployment) -> None:
        """Processes to match the desired split, and the router's split to what is ready."""
        now = time.monotonic()
        desired = deployment.desired()
        for number in [n for n, pct in desired.items() if pct > 0]:
            process = deployment.processes.get(number)
            if process is None or process.state == FAILED:
                continue
            if process.pid and not self._alive(process):
                self._exited(deployment, process, now)
            elif process.pid and process.state == READY and process.misses >= self.ready_misses:
                self._stop(process)
                self._exited(deployment, process, now,
                             f"missed {process.misses} readiness probes in a row")  # fmt: skip
            elif process.pid and process.state != READY and now - process.launched_at > self.start_timeout_s:
                self._stop(process)
                self._exited(deployment, process, now, f"not ready within {self.start_timeout_s:.0f}s")
            if not process.pid and process.state != FAILED and now >= process.retry_at:
                self._launch(deployment.name, process)
        # A canary that failed leaves the split to the serving revision.
        if (
            deployment.latest != deployment.serving
            and deployment.processes[deployment.latest].state == FAILED
        ):
            deployment.percent = 0
            desired = deployment.desired()
        ready = {n for n, p in deployment.processes.items() if p.state == READY and p.pid}
        live = {n: pct for n, pct in desired.items() if pct > 0}
        if all(n in ready for n in live):
            effective = live
        elif ready & live.keys():
            effective = _share({n: live[n] for n in ready & live.keys()})
        else:
            effective = {
                n: pct for n, pct in deployment.effective.items() if n in ready
            } or deployment.effective
            effective = _share(effective) if effective else {}
        if effective != deployment.effective:
            log.info("deployment %s: traffic %s", deployment.name, effective)
            deployment.effective = effective
        deployment.router.set_routes({n: Route(self._url(p.port), pct, self._address(p.grpc_port))
                                      for n, pct in effective.items()
                                      for p in [deployment.processes[n]]})  # fmt: skip
        keep = set(live) | set(effective)
        for number, process in deployment.processes.items():
            if number in keep or not process.pid:
                if number in keep:
                    process.left_split_at = 0.0
                continue
            process.left_split_at = process.left_split_at or now
            if deployment.router.in_flight(number) == 0 or now - process.left_split_at > self.drain_s:
                self._stop(process)
                if process.state != FAILED:
                    process.state, process.reason = RETIRED, "no longer serving"

    def _exited(self, deployment: _Deployment, process: _Process, now: float, why: str = "") -> None:
        code = process.popen.poll() if process.popen else None
        why = why or (f"exited with code {code}" if code is not None else "exited")
        number = process.revision.number
        process.pid, process.popen, process.misses = 0, None, 0
        if not process.ever_ready:
            process.state = FAILED
            process.reason = f"predictor {why} before it was ready:\n{_tail(process.log_path)}"[:2000]
            log.warning("deployment %s: revision %d failed: %s", deployment.name, number, why)
            return
        delay = RESTART_BACKOFF_S[min(process.failures, len(RESTART_BACKOFF_S) - 1)]
        process.failures += 1
        process.state, process.reason, process.retry_at = (
            DEPLOYING,
            f"predictor {why}; starting it again",
            now + delay,
        )
        log.warning("deployment %s: revision %d's predictor %s; starting it again in %.0fs", deployment.name,
                    number, why, delay)  # fmt: skip

    def _files_match(self, name: str, process: _Process) -> bool:
        """Whether the files the predictor would load match their manifest; a changed file is never served.

        A revision whose files do not match FAILS, naming them; one whose files cannot be read now
        (a store that does not answer) is tried again later if it has served before, else FAILS.
        """
        try:
            check_artifact_files(process.model_dir, "model_uri")
            for i, (_, location) in enumerate(process.revision.adapters):
                check_artifact_files(location, f"adapters[{i}].uri")
            return True
        except SlmopsError as exc:
            why = f"predictor not started: {exc}"[:2000]
            log.warning("deployment %s: revision %d: %s", name, process.revision.number, why)
            if isinstance(exc, InvalidSpec) or not process.ever_ready:
                process.state, process.reason = FAILED, why
            else:
                delay = RESTART_BACKOFF_S[min(process.failures, len(RESTART_BACKOFF_S) - 1)]
                process.failures += 1
                process.state, process.reason, process.retry_at = DEPLOYING, why, time.monotonic() + delay
            return False

    def _launch(self, name: str, process: _Process) -> None:
        if not self._files_match(name, process):
            return
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        command = predictor_command(process.model_dir, name, self.host, process.port, process.grpc_port,
                                    program=self.program, api_key_file=predictor_key.configured_file(),
                                    max_body_bytes=self.max_body_bytes, limits=process.revision.limits)  # fmt: skip
        for adapter, location in process.revision.adapters:
            command += ["--adapter", f"{adapter}={artifacts.local_path(location)}"]
        with open(process.log_path, "ab") as log_file:
            process.popen = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                             env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)  # fmt: skip
        process.pid, process.launched_at = process.popen.pid, time.monotonic()
        process.created = _created(process.pid)
        process.state = DEPLOYING
        log.info("deployment %s: revision %d's predictor started (pid %d, port %d, gRPC port %d)", name,
                 process.revision.number, process.pid, process.port, process.grpc_port)  # fmt: skip

    def _alive(self, process: _Process) -> bool:
        if process.popen is not None:
            return process.popen.poll() is None
        return _is_ours(process.pid, process.created)

    def _stop(self, process: _Process) -> None:
        if process.pid and (process.popen is not None or _is_ours(process.pid, process.created)):
            stop_group(process.pid, 10.0, process.popen)
        process.pid, process.popen = 0, None

    def _status(self, deployment: _Deployment) -> BackendStatus:
        revisions = {
            n: RevisionStatus(p.state, self._url(p.port) if p.state == READY else "", p.reason,
                              self._runtime(deployment, p),
                              grpc_address=self._address(p.grpc_port) if p.state == READY else "")
            for n, p in deployment.processes.items()
        }  # fmt: skip
        live = [n for n, pct in deployment.desired().items() if pct > 0]
        ready = [n for n in deployment.effective if deployment.processes[n].state == READY]
        if ready:
            state, reason = READY, ""
        elif live and all(deployment.processes[n].state == FAILED for n in live):
            state, reason = FAILED, deployment.processes[live[0]].reason
        else:
            state = DEPLOYING
            reason = next((deployment.processes[n].reason for n in live if deployment.processes[n].reason),
                          "waiting for a predictor to be ready")  # fmt: skip
        return BackendStatus(state=state, url=deployment.server.url, ready_revision=max(ready) if ready else None,
                             traffic=dict(deployment.effective), reason=reason, revisions=revisions,
                             grpc_address=deployment.grpc.address)  # fmt: skip


def predictor_command(model_dir: str, name: str, host: str, port: int, grpc_port: int, *,
                      program: list[str] | None = None, api_key_file: str = "",
                      max_body_bytes: int | None = None, limits: PredictorLimits | None = None) -> list[str]:  # fmt: skip
    """The predictor's argv; the deployment's `limits` (its max_body_bytes over the backend's) ride along."""
    limits = limits or PredictorLimits()
    max_body_bytes = limits.max_body_bytes or max_body_bytes
    command = [
        *(program or [sys.executable, "-m", "slmops.predictor"]),
        "--model-dir", model_dir, "--name", name, "--host", host, "--http-port", str(port),
        "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    if max_body_bytes is not None:
        command += ["--max-body-bytes", str(max_body_bytes)]
    command += replace(limits, max_body_bytes=0).flags()
    if api_key_file:
        command += ["--api-key-file", str(Path(api_key_file).expanduser())]
    return command


def _share(split: dict[int, int]) -> dict[int, int]:
    """The same proportions summing to 100 (largest remainders get the rounding)."""
    total = sum(split.values())
    if total <= 0:
        return {}
    exact = {n: pct * 100 / total for n, pct in split.items()}
    shares = {n: int(v) for n, v in exact.items()}
    for n in sorted(exact, key=lambda k: exact[k] - shares[k], reverse=True)[: 100 - sum(shares.values())]:
        shares[n] += 1
    return shares
