"""Deployments: validation, records, predictor processes, and the deployment artifact.

A deployment record lives in the service's job store (kind "deployment", id =
name) and runs on the shared lifecycle (core/lifecycle.py) with a
`PredictorEngine`. Creating one starts its predictor in the background; the
record moves DEPLOYING -> READY (with its URL) or FAILED (with the
predictor's own words). A predictor that dies is started again, with backoff,
on the same port, so its URL stays valid; after a service restart a
deployment whose predictor still answers is adopted, and one whose predictor
is gone is started again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound, Unavailable, collect
from slmops.core.jobstore import Event, JobRecord, JobStore
from slmops.core.lifecycle import Lifecycle, States, Update
from slmops.serving import local_backend

log = logging.getLogger(__name__)

KIND = "deployment"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SERVABLE_KINDS = ("onnx-model", "checkpoint")


def resolve_model_dir(uri: str, field: str = "spec.model_uri") -> tuple[str, str]:
    """(confined URI, local model folder) for an artifact or a plain model folder."""
    full = artifacts.confine(uri, settings.allowed_roots(), field)
    if not full.startswith("file://"):
        raise InvalidSpec(field, f"{uri!r}: the local backend serves models from this machine's filesystem")
    artifacts.open_input(full, field, verify=False)  # hashes are checked before the predictor starts
    path = artifacts.local_path(full)
    if not path.is_dir():
        raise InvalidSpec(field, f"{uri!r} is not a folder")
    if artifacts.is_artifact(full):
        kind = artifacts.read_manifest(full).kind
        if kind not in SERVABLE_KINDS:
            raise InvalidSpec(field, f"artifact kind {kind!r} cannot be served; one of {', '.join(SERVABLE_KINDS)}")
    if not (path / "genai_config.json").exists() and not (path / "config.json").exists():
        raise InvalidSpec(field, f"{uri!r} holds neither an ONNX Runtime GenAI model nor a Hugging Face checkpoint")
    return full, str(path)


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    """Check a deployment spec (plain dict of the proto) and report every problem at once."""
    problems: list[tuple[str, str]] = []
    name = spec.get("name", "")
    if not NAME_RE.match(name):
        problems.append(("spec.name", "must be a DNS-1123 label: lowercase letters, digits and '-', at most 63"))
    backend = spec.get("backend", "SERVING_BACKEND_UNSPECIFIED")
    if backend == "SERVING_BACKEND_UNSPECIFIED":
        backend = settings.get("serving_backend").upper()
    if backend != "LOCAL":
        problems.append(("spec.backend", f"backend {backend} is not available on this service (only LOCAL)"))
    canary = int(spec.get("canary_traffic_percent", 0))
    if not 0 <= canary <= 100:
        problems.append(("spec.canary_traffic_percent", "must be between 0 and 100"))
    elif canary not in (0, 100):
        problems.append(("spec.canary_traffic_percent", "a new deployment takes all traffic (0 or 100)"))
    if spec.get("adapters"):
        problems.append(("spec.adapters", "serving LoRA adapters is not available yet"))
    port = int(spec.get("port", 0))
    if not 0 <= port <= 65535:
        problems.append(("spec.port", "must be between 0 and 65535"))
    model_dir = ""
    model_uri = spec.get("model_uri", "")
    if not model_uri:
        problems.append(("spec.model_uri", "is required"))
    else:
        try:
            model_uri, model_dir = resolve_model_dir(model_uri)
        except (InvalidSpec, NotFound) as exc:
            problems.append(("spec.model_uri", str(exc).split(": ", 1)[-1]))
    collect(problems)
    return {"name": name, "model_uri": model_uri, "model_dir": model_dir, "port": port, "backend": backend}


# A deployment never succeeds: it is READY until it is DELETED (or FAILED to start).
DEPLOYMENT_STATES = States(pending="DEPLOYING", running="READY", succeeded="SUCCEEDED", failed="FAILED",
                           cancelled="DELETED")  # fmt: skip
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class PredictorEngine:
    """The lifecycle's engine for deployments on this machine: one supervised predictor process each.

    Submitting starts the predictor (on the port the record already has, so its
    URL stays valid across restarts); polling checks it answers readiness and
    starts it again, with backoff, when it has gone. A record whose predictor
    still answers is adopted after a restart, never started twice.
    """

    def __init__(self, store: JobStore, logs_dir: Path, host: str):
        self.store, self.logs_dir, self.host = store, logs_dir, host
        self._ready: dict[str, dict[str, Any]] = {}  # started, not yet reported
        self._failures: dict[str, int] = {}

    async def find(self, record: JobRecord) -> str:
        return ""

    async def attached(self, record: JobRecord) -> bool:
        pid, url = int(record.result.get("pid", 0)), record.result.get("url", "")
        return await asyncio.to_thread(local_backend.is_alive, pid, url)

    async def submit(self, record: JobRecord) -> str:
        config = record.config
        port = int(record.result.get("port") or config["port"] or 0)
        try:
            await asyncio.to_thread(artifacts.open_input, config["model_uri"], "spec.model_uri")
            predictor = await asyncio.to_thread(
                local_backend.start_predictor, record.id, config["model_dir"], self.logs_dir,
                host=self.host, port=port, traceparent=record.traceparent,
            )
        except InvalidSpec as exc:
            raise Unavailable(str(exc)) from None
        revision = int(record.result.get("revision", 0)) or 1
        started = {"pid": predictor.pid, "port": predictor.port, "url": predictor.url, "revision": revision,
                   "log": str(predictor.log_path)}  # fmt: skip
        # Recorded at once: a service stopped before its next poll still finds (and adopts) this predictor.
        await asyncio.to_thread(self.store.update, record.id, result=started)
        if not record.output_uri:
            uri = await asyncio.to_thread(_write_artifact, record.id, revision, config["model_uri"], predictor.url,
                                          record.trace_id)  # fmt: skip
            await asyncio.to_thread(self.store.update, record.id, output_uri=uri)
        self._ready[record.id] = started
        return f"pid:{predictor.pid}"

    async def poll(self, record: JobRecord) -> Update:
        started = self._ready.pop(record.id, None)
        if started is not None:
            self._failures.pop(record.id, None)
            return Update(state="RUNNING", result=started, message=f"ready at {started['url']}")
        if await self.attached(record):
            url = record.result.get("url", "")
            return Update(state="RUNNING", message=f"ready at {url}" if record.state != "READY" else "")
        failures = self._failures.get(record.id, 0)
        # What is left of its process group (a worker that outlived the predictor still holds the port) goes
        # first: the group id stays ours while any member lives, so no stranger is signalled.
        pid = int(record.result.get("pid", 0))
        if pid:
            await asyncio.to_thread(local_backend.stop_predictor, pid, 5.0)
        await asyncio.sleep(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])
        try:
            await self.submit(record)
        except Unavailable as exc:
            self._failures[record.id] = failures + 1
            log.warning("deployment %s: restarting its predictor failed (%d): %s", record.id, failures + 1, exc)
            return Update(state="PENDING", message=f"predictor gone; starting it again failed: {exc}"[:500])
        return Update(state="PENDING", message="predictor gone; started it again")

    async def stop(self, record: JobRecord) -> bool:
        started = self._ready.pop(record.id, None)
        pid = int((started or record.result).get("pid", 0))
        if pid:
            await asyncio.to_thread(local_backend.stop_predictor, pid)
        return True


def _write_artifact(name: str, revision: int, model_uri: str, url: str, trace_id: str) -> str:
    root = settings.artifact_root().rstrip("/")
    uri = f"{root}/deployments/{name}-{revision}"
    folder = artifacts.local_path(uri)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deployment.json").write_text(
        json.dumps({"name": name, "revision": revision, "model_uri": model_uri, "url": url}, indent=2)
    )
    artifacts.finalize(uri, "deployment", spec={"name": name, "model_uri": model_uri},
                       parents=[model_uri], trace_id=trace_id)
    return uri


class Deployments(Lifecycle):
    """Deployments on the shared lifecycle (core/lifecycle.py) with local predictor processes."""

    def __init__(self, store: JobStore, logs_dir: Path | None = None, host: str | None = None, **options: Any):
        engine = PredictorEngine(store, logs_dir or settings.data_dir() / "logs", host or settings.get("serving_host"))
        super().__init__(KIND, store, engine, states=DEPLOYMENT_STATES, **{"poll_s": 2.0, **options})

    # -- commands ---------------------------------------------------------

    async def create(self, spec: dict[str, Any]) -> JobRecord:
        config = await asyncio.to_thread(validate, spec)
        name = config["name"]
        try:
            existing = await asyncio.to_thread(self.store.get, name)
        except NotFound:
            existing = None
        if existing and existing.state != "DELETED":
            raise AlreadyExists(f"deployment {name!r} exists ({existing.state}); delete it first")
        record = JobRecord(
            id=name, kind=KIND, spec=spec, config=config,
            labels=dict(spec.get("labels", {})), message="starting predictor",
            trace_id=tracing.current_trace_id(), traceparent=tracing.current_traceparent(),
        )
        if existing is None:
            await self.record(record, "starting predictor")
        else:  # a deleted name deployed again
            await asyncio.to_thread(
                self.store.update, name, state="DEPLOYING", result={}, reason="", output_uri="", ray_job_id="",
                owner="", lease_expires=0.0,
                **{k: getattr(record, k) for k in ("spec", "config", "labels", "message", "trace_id", "traceparent")},
            )
            await self.event(name, "DEPLOYING", 0.0, "starting predictor")
            if await self._claim(name):
                self._follow(name)
        return await asyncio.to_thread(self.store.get, name)

    def list(self, labels: dict[str, str], page_size: int, page_token: str) -> tuple[list[JobRecord], str]:
        return self.store.list(KIND, None, labels, page_size, page_token)

    async def delete(self, name: str) -> JobRecord:
        record = await asyncio.to_thread(self.get, name)
        if record.state == "DELETED":
            raise Conflict(f"deployment {name!r} is already deleted")
        if record.state == "FAILED":  # nothing runs: the record is just marked
            await asyncio.to_thread(self.store.update, name, state="DELETED", message="deleted")
            await self.event(name, "DELETED", 1.0, "deleted")
            return await asyncio.to_thread(self.store.get, name)
        await self.cancel(name)
        await asyncio.to_thread(self.store.update, name, message="deleted", result={**record.result, "pid": 0})
        return await asyncio.to_thread(self.store.get, name)

    def watch(self, name: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        """Events until the deployment is READY, FAILED or DELETED."""
        return super().watch(name, after_sequence, until=lambda r: r.state in ("READY", "FAILED", "DELETED"))

    async def close(self, stop_predictors: bool = True) -> None:
        """Stop following; with stop_predictors, stop this replica's predictors (started again on resume)."""
        followed = [await asyncio.to_thread(self.store.get, name) for name in list(self._tasks)]
        await super().close()
        if stop_predictors:
            for record in followed:
                pid = int(record.result.get("pid", 0))
                if pid:
                    await asyncio.to_thread(local_backend.stop_predictor, pid)
