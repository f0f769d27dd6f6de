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
the engine's poll (serving/engine.py) owns what the backend reports in
`result` (URL, traffic, whether the desired split is reached) and the
revisions' states.

A deployment's predictor limits (DeploymentSpec.limits) are kept in its
`config`: every revision runs with them, canaries and rollbacks too. A
promotion that names no report is held to the newest evaluation report whose
gate judged the canary (serving/reports.py): a failed gate refuses it unless
it is forced, and a forced one says so in the deployment's events.

The backend (serving/backends/) is the one the service is configured with:
`local` (predictor processes behind a router) or `kserve` (InferenceServices).
A revision's files are checked against its artifact's manifest before they
are served: by the local backend before each start of a predictor, and here,
before a revision is handed to a backend that does not check them itself
(kserve); a revision whose files changed since they were sealed FAILS, naming
them (its deployment too, when it is the first revision).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound, SlmopsError, Unavailable
from slmops.core.jobs.lifecycle import Lifecycle, States
from slmops.core.jobs.store import Event, JobRecord, JobStore
from slmops.core.stores import filesystem, is_local
from slmops.serving.backends import DEPLOYING, FAILED, RETIRED, Revision, ServingBackend
from slmops.serving.engine import (
    DEPLOYMENT_LABEL,
    REVISION_KIND,
    BackendEngine,
    as_revision,
    revision_id,
    revisions_of,
)
from slmops.serving.reports import Canary, Finding, newest_report
from slmops.serving.validation import (
    check_artifact_files,
    check_gate,
    configured_backend,
    resolve_adapters,
    resolve_model,
    validate,
)

__all__ = ["KIND", "DEPLOYMENT_STATES", "Deployments", "Revision", "make_backend", "revision_id"]

log = logging.getLogger(__name__)

KIND = "deployment"

# A deployment never succeeds: it is READY until it is DELETED (or FAILED to start).
DEPLOYMENT_STATES = States(pending="DEPLOYING", running="READY", succeeded="SUCCEEDED", failed="FAILED",
                           cancelled="DELETED")  # fmt: skip


# -- the deployments ---------------------------------------------------------------


class CheckingEngine(BackendEngine):
    """The backend engine, checking each revision's files before a backend that does not (kserve) gets it.

    Checked here: a model on this machine's filesystem (for kserve, the shared claim). A model on an
    object store is not downloaded into the serving service to be hashed: the cluster fetches it.
    Each revision is checked once per process (hashing a model is costly); a mismatch marks it FAILED
    and raises InvalidSpec naming the files (Unavailable when starting a deployment, which FAILS it).
    """

    def __init__(self, store: JobStore, backend: ServingBackend, records_dir: Path):
        super().__init__(store, backend, records_dir)
        self._checked: set[tuple[str, str]] = set()

    async def submit(self, record: JobRecord) -> str:
        try:
            return await super().submit(record)
        except InvalidSpec as exc:  # its first revision's files do not match: the deployment FAILS
            raise Unavailable(str(exc)) from None

    def restore(self, record: JobRecord) -> None:
        if not getattr(self.backend, "checks_files", False):
            self.check_files(record)
        super().restore(record)

    def check_files(self, record: JobRecord) -> None:
        keep = {int(record.config.get("serving", 0)), int(record.config.get("latest", 0))}
        for rev in self.revisions(record.id):
            key = (rev.id, rev.config.get("model_uri", ""))
            if rev.config["number"] not in keep or rev.state in (FAILED, RETIRED) or key in self._checked \
                    or not is_local(key[1]):  # fmt: skip
                continue
            try:
                check_artifact_files(rev.config["model_uri"], "model_uri")
            except InvalidSpec as exc:
                self.store.update(rev.id, state=FAILED, reason=f"not served: {exc}"[:2000])
                raise
            self._checked.add(key)


class Deployments(Lifecycle):
    """Deployments on the shared lifecycle, served by one backend."""

    def __init__(self, store: JobStore, backend: ServingBackend | None = None, **options: Any):
        if backend is None:
            backend = make_backend()
        self.backend = backend
        engine = CheckingEngine(store, backend, settings.data_dir() / "deployments")
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

    async def promote(self, name: str, report_uri: str = "", force: bool = False) -> JobRecord:
        """All traffic to the canary. With a report, only when its gate passed; without one, only when the
        newest report whose gate judged the canary (serving/reports.py) passed, unless `force`."""
        if force and report_uri:
            raise InvalidSpec("force", "a promotion that requires a report (evaluation_report_uri) cannot "
                                       "also skip it; ask for one or the other")  # fmt: skip
        record = await asyncio.to_thread(self.get, name)
        reasons = await asyncio.to_thread(check_gate, report_uri) if report_uri else []
        found = None if report_uri else await asyncio.to_thread(self._canary_report, record)
        if found is not None and found.blocks and not force:
            raise Conflict(f"deployment {name!r}: the evaluation report {found.uri} judged canary revision "
                           f"{record.config['latest']}: {found.why()}; roll it back, evaluate it again, or "
                           "promote with --force")  # fmt: skip
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
            if found is not None and found.blocks:
                gate = f" (forced past the evaluation report {found.uri}: {found.why()})"
                log.warning("deployment %s: revision %d promoted with force%s", name, latest, gate)
            elif found is not None:
                gate = f" (evaluation report {found.uri}: {found.why()})"
            await self._change(record, config, f"promoting revision {latest} to 100%{gate}",
                               lambda: self.backend.promote(name, self.engine.record_dir(name)))  # fmt: skip
        return await asyncio.to_thread(self.store.get, name)

    def _canary_report(self, record: JobRecord) -> Finding | None:
        """The newest evaluation report whose gate judged the deployment's canary (None: no canary or none)."""
        latest = int(record.config.get("latest", 0))
        if latest == int(record.config.get("serving", 0)):
            return None
        rev = self.store.get(revision_id(record.id, latest))
        urls = [*rev.result.get("urls", []), rev.result.get("url", ""), rev.result.get("external_url", "")]
        canary = Canary(deployment=record.id, number=latest, created=rev.created,
                        urls=tuple(dict.fromkeys(u for u in urls if u)),
                        models=(record.id, *(a for a, _ in rev.config.get("adapters", []))))  # fmt: skip
        return newest_report(canary)

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
        except SlmopsError as exc:
            await asyncio.to_thread(self.store.update, record.id, config=record.config, message=record.message,
                                    output_uri=record.output_uri)  # fmt: skip
            if config["latest"] != record.config["latest"]:
                await asyncio.to_thread(self.store.update, revision_id(record.id, int(config["latest"])),
                                        state=FAILED, reason=f"the backend refused it: {exc}"[:2000])  # fmt: skip
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
