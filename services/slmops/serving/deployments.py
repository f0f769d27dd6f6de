"""Deployments and their revisions: records, rollouts, and the lifecycle's engine over a backend.

A deployment record (kind "deployment", id = name) runs on the shared
lifecycle (core/jobs/lifecycle.py): DEPLOYING until one of its revisions answers,
READY while one does, FAILED when its first revision cannot start, DELETED.
Each revision has its own record (kind "revision", id "<name>.rev<n>"):
model, adapters, state, URL, traffic, and its deployment artifact (lineage to
the model). Revision numbers only grow, across deletes too, and the records
stay after a delete: a name deployed again continues its history.

Who writes what, so that no write is lost: the commands (create, update,
promote, rollback) own the deployment's desired split in `config` (serving
revision, latest revision, the latest's percent, the rolled-out history);
the engine's poll owns what the backend reports in `result` (URL, traffic,
whether the desired split is reached) and the revisions' states.

The backend (serving/backends/) is the one the service is configured with:
`local` (predictor processes behind a router) or `kserve` (InferenceServices).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import (
    AlreadyExists,
    Conflict,
    InvalidSpec,
    NotFound,
    SlmopsError,
    Unavailable,
)
from slmops.core.jobs.lifecycle import Lifecycle, States, Update
from slmops.core.jobs.store import MAX_PAGE, Event, JobRecord, JobStore
from slmops.core.stores import filesystem
from slmops.serving.backends import (
    DEPLOYING,
    FAILED,
    READY,
    RETIRED,
    BackendStatus,
    Revision,
    ServingBackend,
    split,
)
from slmops.serving.validation import (
    check_gate,
    configured_backend,
    resolve_adapters,
    resolve_model,
    validate,
)

log = logging.getLogger(__name__)

KIND = "deployment"
REVISION_KIND = "revision"
DEPLOYMENT_LABEL = "slmops.io/deployment"

# A deployment never succeeds: it is READY until it is DELETED (or FAILED to start).
DEPLOYMENT_STATES = States(pending="DEPLOYING", running="READY", succeeded="SUCCEEDED", failed="FAILED",
                           cancelled="DELETED")  # fmt: skip


def revision_id(name: str, number: int) -> str:
    return f"{name}.rev{number}"  # a DNS-1123 label has no dots: never another deployment's id


# -- the engine -------------------------------------------------------------------


def desired_split(config: dict[str, Any]) -> dict[int, int]:
    return split(int(config.get("serving", 0)), int(config.get("latest", 0)), int(config.get("percent", 100)))


def _traffic_text(traffic: dict[int, int]) -> str:
    return ", ".join(f"revision {n}: {pct}%" for n, pct in sorted(traffic.items()) if pct > 0) or "none"


class BackendEngine:
    """The lifecycle's engine for deployments: the configured backend, its status kept in the records."""

    def __init__(self, store: JobStore, backend: ServingBackend, records_dir: Path):
        self.store, self.backend, self.records_dir = store, backend, records_dir
        self.notify = lambda name: None

    def revisions(self, name: str) -> list[JobRecord]:
        return revisions_of(self.store, name)

    def record_dir(self, name: str) -> Path:
        return self.records_dir / name

    async def find(self, record: JobRecord) -> str:
        return ""

    async def attached(self, record: JobRecord) -> bool:
        try:
            await asyncio.to_thread(self.backend.status, record.id)
            return True
        except NotFound:
            return False

    async def submit(self, record: JobRecord) -> str:
        """Bring the deployment up as recorded: adopt what still runs, start what should (the first time too)."""
        await asyncio.to_thread(self.restore, record)
        return f"{record.config['backend'].lower()}:{record.id}"

    def restore(self, record: JobRecord) -> None:
        config, name = record.config, record.id
        keep = {int(config.get("serving", 0)), int(config.get("latest", 0))}
        revisions = [r for r in self.revisions(name) if r.config["number"] in keep]
        port = int(record.result.get("port") or config.get("port") or 0)
        try:
            self.backend.restore(
                name, [as_revision(r, config, port) for r in revisions],
                {r.config["number"]: r.result.get("runtime", {}) for r in revisions},
                int(config["serving"]), int(config["latest"]), int(config.get("percent", 100)),
            )  # fmt: skip
            self.backend.status(name)
        except NotFound:  # nothing there (an InferenceService deleted behind our back): apply it again
            latest = next(r for r in revisions if r.config["number"] == int(config["latest"]))
            self.backend.apply(name, as_revision(latest, config, port), self.record_dir(name))
        except (InvalidSpec, Conflict) as exc:  # a spec the backend refuses, an object that is not ours
            raise Unavailable(str(exc)) from None
        if self.store.get(name).state in ("DELETED", "FAILED"):  # deleted while this started it: undo
            self.backend.delete(name)

    async def poll(self, record: JobRecord) -> Update:
        try:
            status = await asyncio.to_thread(self.backend.status, record.id)
        except NotFound as exc:
            raise Unavailable(
                f"the backend does not know deployment {record.id!r} ({exc}); asking again"
            ) from None
        except Conflict as exc:  # replaced by an object this service does not manage: never touched again
            return Update(state="FAILED", reason=str(exc))
        return await asyncio.to_thread(self.observe, record, status)

    def observe(self, record: JobRecord, status: BackendStatus) -> Update:
        """Keep what the backend reports in the revision records; the deployment's Update."""
        name, config = record.id, record.config
        latest = int(config["latest"])
        desired = desired_split(config)
        active = {n for n, pct in desired.items() if pct > 0} | ({latest} if desired.get(latest) else set())
        for rev in self.revisions(name):
            if rev.created > record.updated:
                continue  # created by a command after this record was read: the next poll sees its config
            number = rev.config["number"]
            seen = status.revisions.get(number)
            state, url, reason = rev.state, rev.result.get("url", ""), rev.reason
            external = rev.result.get("external_url", "")
            if seen is not None:
                state, url, reason, external = seen.state, seen.url, seen.reason or "", seen.external_url
            elif number == status.ready_revision or (number != latest and status.traffic.get(number)):
                state, url, reason, external = READY, status.url, "", status.external_url
            elif number == latest and status.state == FAILED:
                state, reason = FAILED, status.reason
            if number not in active and state != FAILED and not status.traffic.get(number):
                state, url, external = RETIRED, "", ""
            if state == RETIRED:  # why, as the command said (rolled back), before the backend's words
                reason = rev.config.get("retired_because") or reason or "no longer serving"
            traffic = int(status.traffic.get(number, 0))
            runtime = seen.runtime if seen is not None else rev.result.get("runtime", {})
            result = {**rev.result, "url": url, "traffic_percent": traffic, "runtime": runtime}
            if external or "external_url" in result:
                result["external_url"] = external
            if state != rev.state or result != rev.result or reason != rev.reason:
                self.store.update(rev.id, state=state, result=result, reason=reason if state != READY else "")
                if state != rev.state:
                    said = f"revision {number}: {state}" + (f" at {url}" if url and state == READY else "")
                    said += f" ({reason.splitlines()[0]})" if reason and state in (FAILED, DEPLOYING) else ""
                    self.store.add_event(name, record.state, 1.0 if state == READY else record.fraction, said)
        traffic = {n: pct for n, pct in status.traffic.items() if pct > 0}
        latest_failed = self.store.get(revision_id(name, latest)).state == FAILED
        # A failed canary leaves its deployment serving the revision before it.
        serves = status.state == READY or (
            status.state == FAILED and status.ready_revision is not None and traffic
        )
        settled = serves and (traffic == {n: p for n, p in desired.items() if p > 0} or latest_failed)
        result = {**record.result, "url": status.url, "traffic": {str(n): p for n, p in traffic.items()},
                  "settled": int(config.get("generation", 0)) if settled else -1}  # fmt: skip
        if status.external_url:
            result["external_url"] = status.external_url
        if status.url and urlsplit(status.url).port:
            result["port"] = urlsplit(status.url).port
        if traffic != {int(n): p for n, p in record.result.get("traffic", {}).items()} and traffic:
            self.store.add_event(name, record.state, 1.0, f"traffic: {_traffic_text(traffic)}")
        result = result if result != record.result else None
        if serves:
            external = f" (outside the cluster: {status.external_url})" if status.external_url not in ("", status.url) \
                else ""  # fmt: skip
            return Update(state="RUNNING", result=result, message=f"ready at {status.url}{external}")
        if status.state == FAILED:
            left = getattr(self.backend, "failed_note", None)
            if left is not None:  # the backend's objects stay to be inspected (kserve: the InferenceService)
                return Update(state="FAILED", result=result, reason=f"{status.reason}; {left(name)}")
            try:
                self.backend.delete(name)
            except SlmopsError as exc:
                log.warning("deployment %s: cleaning up after its failure: %s", name, exc)
            return Update(state="FAILED", result=result, reason=status.reason)
        return Update(state="PENDING", result=result, message=status.reason)

    async def stop(self, record: JobRecord) -> bool:
        try:
            await asyncio.to_thread(self.backend.delete, record.id)
        except NotFound:
            pass
        except Conflict as exc:  # an object of that name that is not ours: left alone, the record still goes
            log.warning("deployment %s: %s", record.id, exc)
        return True


def revisions_of(store: JobStore, name: str) -> list[JobRecord]:
    """Every revision record of a deployment, oldest first."""
    found, token = [], ""
    while True:
        page, token = store.list(REVISION_KIND, None, {DEPLOYMENT_LABEL: name}, MAX_PAGE, token)
        found += page
        if not token:
            return sorted(found, key=lambda r: r.config["number"])


def as_revision(rev: JobRecord, config: dict[str, Any], port: int) -> Revision:
    number = rev.config["number"]
    desired = desired_split(config)
    resources = config.get("resources") or {}
    return Revision(number=number, model_uri=rev.config["model_uri"], storage_uri=rev.config["storage_uri"],
                    traffic_percent=desired.get(number, 0) if number != int(config["serving"]) else 100,
                    adapters=tuple(tuple(a) for a in rev.config.get("adapters", [])), port=port,
                    cpus=float(resources.get("cpus", 0)), memory=str(resources.get("memory", "")),
                    gpus=int(resources.get("gpus", 0)))  # fmt: skip


# -- the deployments ---------------------------------------------------------------


class Deployments(Lifecycle):
    """Deployments on the shared lifecycle, served by one backend."""

    def __init__(self, store: JobStore, backend: ServingBackend | None = None, **options: Any):
        if backend is None:
            backend = make_backend()
        self.backend = backend
        engine = BackendEngine(store, backend, settings.data_dir() / "deployments")
        super().__init__(KIND, store, engine, states=DEPLOYMENT_STATES, **{"poll_s": 2.0, **options})
        self.engine: BackendEngine
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- commands ---------------------------------------------------------

    async def create(self, spec: dict[str, Any]) -> JobRecord:
        config = await asyncio.to_thread(validate, spec)
        name = config["name"]
        async with self._lock(name):
            existing = await asyncio.to_thread(self._find, name)
            if existing and existing.state != "DELETED":
                raise AlreadyExists(f"deployment {name!r} exists ({existing.state}); deploy a new revision with "
                                    "--canary (UpdateDeployment), or delete it first")  # fmt: skip
            check_owner = getattr(self.backend, "check_owner", None)
            if (
                check_owner is not None
            ):  # kserve: an InferenceService of this name that is not ours is left alone
                await asyncio.to_thread(check_owner, name)
            number = await asyncio.to_thread(self._next_number, name)
            config.update(serving=number, latest=number, percent=100, rolled_out=[number], generation=1)
            record = JobRecord(
                id=name, kind=KIND, spec=spec, config=config, labels=dict(spec.get("labels", {})),
                message=f"starting revision {number}", trace_id=tracing.current_trace_id(),
                traceparent=tracing.current_traceparent(),
            )  # fmt: skip
            await asyncio.to_thread(self._new_revision, record, number, config["model_uri"], config["storage_uri"],
                                    config["adapters"])  # fmt: skip
            if existing is None:
                await self.record(record, f"starting revision {number}")
            else:  # a deleted name deployed again: its history continues
                await asyncio.to_thread(
                    self.store.update, name, state="DEPLOYING", result={}, reason="", ray_job_id="", owner="",
                    lease_expires=0.0, output_uri=record.output_uri,
                    **{k: getattr(record, k) for k in ("spec", "config", "labels", "message", "trace_id",
                                                       "traceparent")},
                )  # fmt: skip
                await self.event(name, "DEPLOYING", 0.0, f"starting revision {number}")
                if await self._claim(name):
                    self._follow(name)
        return await asyncio.to_thread(self.store.get, name)

    async def update(
        self, name: str, model_uri: str, adapters: list[dict[str, Any]], percent: int
    ) -> JobRecord:
        """A new revision: a canary with `percent` of the traffic, or (0/100) the replacement once ready."""
        if not 0 <= percent <= 100:
            raise InvalidSpec("canary_traffic_percent", "must be between 0 and 100")
        record = await asyncio.to_thread(self._find, name)
        if record is None or record.state == "DELETED":
            field = "canary_traffic_percent" if percent not in (0, 100) else "name"
            raise InvalidSpec(field, f"deployment {name!r} does not exist yet: create it first (a canary "
                                     "needs a revision to run beside)")  # fmt: skip
        backend = record.config["backend"]
        if not model_uri:
            raise InvalidSpec("model_uri", "is required")
        resolved = await asyncio.to_thread(resolve_adapters, adapters, backend)
        model_uri, storage_uri = await asyncio.to_thread(resolve_model, model_uri, backend, "model_uri")
        percent = percent if 0 < percent < 100 else 100
        check_traffic = getattr(self.backend, "check_traffic", None)
        if check_traffic is not None:  # kserve: a canary needs Knative mode
            check_traffic(percent)
        async with self._lock(name):
            record = await asyncio.to_thread(self.store.get, name)
            if record.state not in ("READY", "DEPLOYING"):
                raise Conflict(f"deployment {name!r} is {record.state}; delete it and deploy it again")
            config = dict(record.config)
            if int(config["latest"]) != int(config["serving"]) and await self._canary_live(name, config):
                raise Conflict(f"deployment {name!r} already runs a canary (revision {config['latest']}); "
                               "promote it or roll it back first")  # fmt: skip
            number = await asyncio.to_thread(self._next_number, name)
            rev = await asyncio.to_thread(
                self._new_revision, record, number, model_uri, storage_uri, resolved
            )
            config.update(latest=number, percent=percent, generation=int(config.get("generation", 0)) + 1)
            if percent == 100:
                config.update(serving=number, rolled_out=[*config["rolled_out"], number])
            what = f"revision {number}: " + (f"canary at {percent}%" if percent < 100 else "replaces the serving "
                                             "revision once ready")  # fmt: skip
            await self._change(
                record,
                config,
                what,
                lambda: self.backend.apply(
                    name,
                    as_revision(rev, config, int(record.result.get("port", 0))),
                    self.engine.record_dir(name),
                ),
            )
        return await asyncio.to_thread(self.store.get, name)

    async def promote(self, name: str, report_uri: str = "") -> JobRecord:
        """All traffic to the canary; with a report, only when its gate passed."""
        record = await asyncio.to_thread(self.get, name)
        reasons = await asyncio.to_thread(check_gate, report_uri) if report_uri else []
        async with self._lock(name):
            record = await asyncio.to_thread(self.store.get, name)
            config = dict(record.config)
            if record.state not in ("READY", "DEPLOYING") or int(config["latest"]) == int(config["serving"]) \
                    or not await self._canary_live(name, config):  # fmt: skip
                raise Conflict(f"deployment {name!r} has no canary to promote (serving revision "
                               f"{config['serving']}, {record.state})")  # fmt: skip
            latest = int(config["latest"])
            config.update(serving=latest, percent=100, rolled_out=[*config["rolled_out"], latest],
                          generation=int(config.get("generation", 0)) + 1)  # fmt: skip
            gate = f" (gate passed: {'; '.join(reasons)})" if reasons else ""
            await self._change(record, config, f"promoting revision {latest} to 100%{gate}",
                               lambda: self.backend.promote(name, self.engine.record_dir(name)))  # fmt: skip
        return await asyncio.to_thread(self.store.get, name)

    async def rollback(self, name: str) -> JobRecord:
        """All traffic back: to the serving revision while a canary runs, else to the one served before."""
        await asyncio.to_thread(self.get, name)
        async with self._lock(name):
            record = await asyncio.to_thread(self.store.get, name)
            config = dict(record.config)
            if record.state not in ("READY", "DEPLOYING"):
                raise Conflict(f"deployment {name!r} is {record.state}; nothing to roll back")
            serving, latest = int(config["serving"]), int(config["latest"])
            generation = int(config.get("generation", 0)) + 1
            if latest != serving and await self._canary_live(name, config):
                config.update(percent=0, generation=generation)
                await asyncio.to_thread(
                    self._note, name, latest, f"rolled back (all traffic to revision {serving})"
                )
                await self._change(record, config, f"rolling back canary revision {latest}; all traffic to "
                                   f"revision {serving}", lambda: self.backend.rollback(name, self.engine.record_dir(name)))  # fmt: skip
            else:
                history = list(config["rolled_out"])
                if len(history) < 2:
                    raise Conflict(f"deployment {name!r} has no earlier revision to roll back to (revision "
                                   f"{serving} is its first)")  # fmt: skip
                current, previous = history.pop(), history[-1]
                config.update(serving=previous, latest=previous, percent=100, rolled_out=history,
                              generation=generation)  # fmt: skip
                await asyncio.to_thread(self._note, name, current, f"rolled back to revision {previous}")
                await asyncio.to_thread(self._note, name, previous, "")
                rev = await asyncio.to_thread(self.store.get, revision_id(name, previous))
                port = int(record.result.get("port", 0))
                await self._change(record, config, f"rolling back from revision {current} to revision {previous}",
                                   lambda: self.backend.apply(name, as_revision(rev, config, port),
                                                              self.engine.record_dir(name)))  # fmt: skip
        return await asyncio.to_thread(self.store.get, name)

    def list(self, labels: dict[str, str], page_size: int, page_token: str) -> tuple[list[JobRecord], str]:
        return self.store.list(KIND, None, labels, page_size, page_token)

    def revisions(self, name: str) -> list[JobRecord]:
        return revisions_of(self.store, name)

    async def delete(self, name: str) -> JobRecord:
        async with self._lock(name):
            record = await asyncio.to_thread(self.get, name)
            if record.state == "DELETED":
                raise Conflict(f"deployment {name!r} is already deleted")
            if record.state == "FAILED":  # nothing serves: the record is just marked
                await self.engine.stop(record)
                await asyncio.to_thread(self.store.update, name, state="DELETED", message="deleted")
                await self.event(name, "DELETED", 1.0, "deleted")
            else:
                await self.cancel(name)
                await self.engine.stop(record)  # also when it was deleted while its start was under way
                await asyncio.to_thread(self.store.update, name, message="deleted")
            for rev in await asyncio.to_thread(self.revisions, name):
                if rev.state not in (RETIRED, FAILED):
                    await asyncio.to_thread(self.store.update, rev.id, state=RETIRED, reason="deployment deleted",
                                            result={**rev.result, "url": "", "traffic_percent": 0})  # fmt: skip
        return await asyncio.to_thread(self.store.get, name)

    def watch(self, name: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        """Events until the deployment has reached its desired split (READY), FAILED or is DELETED."""

        def settled(record: JobRecord) -> bool:
            if record.state in ("FAILED", "DELETED"):
                return True
            return record.state == "READY" and record.result.get("settled") == record.config.get("generation")

        return super().watch(name, after_sequence, until=settled)

    async def close(self, stop_predictors: bool = True) -> None:
        """Stop following; with stop_predictors, stop this replica's local predictors (started again on resume)."""
        await super().close()
        if hasattr(self.backend, "close"):
            await asyncio.to_thread(self.backend.close, stop_predictors)

    # -- helpers ----------------------------------------------------------

    def _find(self, name: str) -> JobRecord | None:
        try:
            return self.store.get(name, KIND)
        except NotFound:
            return None

    def _note(self, name: str, number: int, why: str) -> None:
        """Say why a revision leaves the split (kept in its config, which only commands write)."""
        rev = self.store.get(revision_id(name, number))
        self.store.update(rev.id, config={**rev.config, "retired_because": why})

    def _next_number(self, name: str) -> int:
        return max((r.config["number"] for r in self.revisions(name)), default=0) + 1

    def _new_revision(self, record: JobRecord, number: int, model_uri: str, storage_uri: str,
                      adapters: list[list[str]]) -> JobRecord:  # fmt: skip
        rev = JobRecord(
            id=revision_id(record.id, number), kind=REVISION_KIND, state=DEPLOYING,
            config={"number": number, "model_uri": model_uri, "storage_uri": storage_uri, "adapters": adapters},
            labels={DEPLOYMENT_LABEL: record.id}, trace_id=record.trace_id, message="starting",
        )  # fmt: skip
        self.store.create(rev)  # first: the number is taken even if writing the artifact fails
        rev.output_uri = _write_artifact(record.id, number, model_uri, adapters, record.config["backend"],
                                         record.trace_id)  # fmt: skip
        self.store.update(rev.id, output_uri=rev.output_uri)
        if int(record.config.get("serving", number)) == number:
            record.output_uri = rev.output_uri
        return rev

    async def _canary_live(self, name: str, config: dict[str, Any]) -> bool:
        rev = await asyncio.to_thread(self.store.get, revision_id(name, int(config["latest"])))
        return int(config.get("percent", 100)) > 0 and rev.state not in (FAILED, RETIRED)

    async def _change(self, record: JobRecord, config: dict[str, Any], what: str, act: Any) -> None:
        """Record the new desired split, then have the backend act; put the old split back if it cannot."""
        changes: dict[str, Any] = {"config": config, "message": what}
        if record.output_uri and config["serving"] != record.config["serving"]:
            rev = await asyncio.to_thread(self.store.get, revision_id(record.id, int(config["serving"])))
            changes["output_uri"] = rev.output_uri
        await asyncio.to_thread(self.store.update, record.id, **changes)
        try:
            await asyncio.to_thread(self.engine.restore, await asyncio.to_thread(self.store.get, record.id))
            await asyncio.to_thread(act)
        except SlmopsError:
            await asyncio.to_thread(self.store.update, record.id, config=record.config, message=record.message,
                                    output_uri=record.output_uri)  # fmt: skip
            if config["latest"] != record.config["latest"]:
                await asyncio.to_thread(self.store.update, revision_id(record.id, int(config["latest"])),
                                        state=FAILED, reason="the backend refused it")  # fmt: skip
            raise
        await self.event(record.id, record.state, record.fraction, what)


def _write_artifact(name: str, number: int, model_uri: str, adapters: list[list[str]], backend: str,
                    trace_id: str) -> str:  # fmt: skip
    """The revision's deployment artifact: what it serves, with the model (and adapters) as parents."""
    root = settings.artifact_root().rstrip("/")
    uri = f"{root}/deployments/{name}-{number}"
    with artifacts.staged(uri) as staging:  # any fsspec URI: the artifact root may be an object store
        fs, folder = filesystem(staging)
        fs.pipe_file(f"{folder}/deployment.json", json.dumps(
            {"name": name, "revision": number, "model_uri": model_uri, "adapters": adapters, "backend": backend},
            indent=2).encode())  # fmt: skip
    artifacts.finalize(uri, "deployment", spec={"name": name, "revision": number, "model_uri": model_uri},
                       parents=[model_uri, *(uri for _, uri in adapters)], trace_id=trace_id)  # fmt: skip
    return uri


def make_backend() -> ServingBackend:
    """The backend the service is configured with (SLMOPS_SERVING_BACKEND)."""
    backend = configured_backend()
    if backend == "KSERVE":
        from slmops.serving.backends.kserve import KServeBackend

        return KServeBackend()
    if backend == "LOCAL":
        from slmops.serving.backends.local import LocalBackend

        return LocalBackend(settings.data_dir() / "logs", settings.get("serving_host"))
    raise InvalidSpec("SLMOPS_SERVING_BACKEND", f"{backend.lower()!r} is not a backend; one of local, kserve")
