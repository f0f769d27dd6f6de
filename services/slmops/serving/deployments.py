"""Deployments: validation, records, predictor processes, and the deployment artifact.

A deployment record lives in the service's job store (kind "deployment", id =
name). Creating one starts its predictor in the background; the record moves
DEPLOYING -> READY (with its URL) or FAILED (with the predictor's own words).
Records survive restarts: a READY deployment whose predictor is gone is
started again on the same port, so its URL stays valid.
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


class Deployments:
    def __init__(self, store: JobStore, logs_dir: Path | None = None, host: str | None = None):
        self.store = store
        self.logs_dir = logs_dir or settings.data_dir() / "logs"
        self.host = host or settings.get("serving_host")
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- commands ---------------------------------------------------------

    async def create(self, spec: dict[str, Any]) -> JobRecord:
        config = validate(spec)
        name = config["name"]
        try:
            existing = self.store.get(name)
        except NotFound:
            existing = None
        if existing and existing.state != "DELETED":
            raise AlreadyExists(f"deployment {name!r} exists ({existing.state}); delete it first")
        record = JobRecord(
            id=name, kind=KIND, state="DEPLOYING", spec=spec, config=config,
            labels=dict(spec.get("labels", {})), message="starting predictor",
            trace_id=tracing.current_trace_id(), traceparent=tracing.current_traceparent(),
        )
        if existing:
            self.store.update(name, **{k: getattr(record, k) for k in ("state", "spec", "config", "labels",
                                                                       "message", "trace_id", "traceparent")},
                              result={}, reason="", output_uri="")
        else:
            self.store.create(record)
        self.store.add_event(name, "DEPLOYING", 0.0, "starting predictor")
        self._start(name)
        return self.store.get(name)

    def get(self, name: str) -> JobRecord:
        return self.store.get(name, KIND)

    def list(self, labels: dict[str, str], page_size: int, page_token: str) -> tuple[list[JobRecord], str]:
        return self.store.list(KIND, None, labels, page_size, page_token)

    async def delete(self, name: str) -> JobRecord:
        record = self.get(name)
        if record.state == "DELETED":
            raise Conflict(f"deployment {name!r} is already deleted")
        task = self._tasks.pop(name, None)
        if task:
            task.cancel()
        pid = int(record.result.get("pid", 0))
        if pid:
            await asyncio.to_thread(local_backend.stop_predictor, pid)
        self.store.update(name, state="DELETED", message="deleted", result={**record.result, "pid": 0})
        self.store.add_event(name, "DELETED", 1.0, "deleted")
        return self.store.get(name)

    async def watch(self, name: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        self.get(name)
        sequence = after_sequence
        while True:
            for event in self.store.events(name, sequence):
                sequence = event.sequence
                yield event
            if self.get(name).state in ("READY", "FAILED", "DELETED") and not self.store.events(name, sequence):
                return
            await asyncio.sleep(0.2)

    # -- predictor processes ----------------------------------------------

    def _start(self, name: str) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(self._bring_up(name))

    async def _bring_up(self, name: str) -> None:
        record = self.store.get(name)
        config = record.config
        port = int(record.result.get("port") or config["port"] or 0)
        try:
            await asyncio.to_thread(artifacts.open_input, config["model_uri"], "spec.model_uri")
            predictor = await asyncio.to_thread(
                local_backend.start_predictor, name, config["model_dir"], self.logs_dir,
                host=self.host, port=port, traceparent=record.traceparent,
            )
        except (Unavailable, InvalidSpec) as exc:
            self.store.update(name, state="FAILED", reason=str(exc), message="predictor failed to start")
            self.store.add_event(name, "FAILED", 0.0, str(exc))
            return
        finally:
            self._tasks.pop(name, None)
        revision = int(record.result.get("revision", 0)) or 1
        artifact_uri = record.output_uri or await asyncio.to_thread(
            self._write_artifact, name, revision, config["model_uri"], predictor.url, record.trace_id
        )
        self.store.update(
            name, state="READY", message=f"ready at {predictor.url}", output_uri=artifact_uri,
            result={"pid": predictor.pid, "port": predictor.port, "url": predictor.url,
                    "revision": revision, "log": str(predictor.log_path)},
        )
        self.store.add_event(name, "READY", 1.0, f"ready at {predictor.url}")

    def _write_artifact(self, name: str, revision: int, model_uri: str, url: str, trace_id: str) -> str:
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

    def resume(self) -> None:
        """Start again every deployment whose predictor is gone; adopt the ones still running."""
        deploying, _ = self.store.list(KIND, "DEPLOYING", None, 500, "")
        for record in deploying + self._ready():
            if record.state == "READY":
                pid, url = int(record.result.get("pid", 0)), record.result.get("url", "")
                if local_backend.is_alive(pid, url):
                    continue
                self.store.add_event(record.id, "DEPLOYING", 0.0, "predictor gone; starting it again")
                self.store.update(record.id, state="DEPLOYING", message="restarting predictor")
            self._start(record.id)

    def _ready(self) -> list[JobRecord]:
        records, _ = self.store.list(KIND, "READY", None, 500, "")
        return records

    async def close(self, stop_predictors: bool = True) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if stop_predictors:
            for record in self._ready():
                pid = int(record.result.get("pid", 0))
                if pid:
                    await asyncio.to_thread(local_backend.stop_predictor, pid)
