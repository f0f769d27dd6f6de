"""The lifecycle's engine for deployments, and the revision records it keeps.

BackendEngine runs a deployment record (serving/deployments.py) on the
configured backend: it brings the deployment up as recorded (adopting what
still runs after a restart), polls the backend, and keeps what the backend
reports in the records: the deployment's URL, traffic and whether its desired
split is reached in `result`, each revision's state, URL and traffic in the
revision's record (kind "revision", id "<name>.rev<n>", labelled with its
deployment).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slmops.core.errors import Conflict, InvalidSpec, NotFound, SlmopsError, Unavailable
from slmops.core.jobs.lifecycle import Update
from slmops.core.jobs.store import MAX_PAGE, JobRecord, JobStore
from slmops.serving.backends import (
    DEPLOYING,
    FAILED,
    READY,
    RETIRED,
    BackendStatus,
    PredictorLimits,
    Revision,
    ServingBackend,
    split,
)

log = logging.getLogger(__name__)

REVISION_KIND = "revision"
DEPLOYMENT_LABEL = "slmops.io/deployment"


def revision_id(name: str, number: int) -> str:
    return f"{name}.rev{number}"  # a DNS-1123 label has no dots: never another deployment's id


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
            seen_urls = [u for u in (url, external) if u and u not in rev.result.get("urls", [])]
            if seen_urls:  # every URL it was reached at, for the evaluation reports that name one
                result["urls"] = [*rev.result.get("urls", []), *seen_urls]
            if external or "external_url" in result:
                result["external_url"] = external
            # Its predictor's OIP v2 gRPC address while it serves (else the deployment's, like its URL).
            grpc_address = ""
            if state == READY and seen is not None:
                grpc_address = seen.grpc_address
            elif state == READY:
                grpc_address = (
                    status.grpc_address if url == status.url else rev.result.get("grpc_address", "")
                )
            if grpc_address or "grpc_address" in result:
                result["grpc_address"] = grpc_address
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
        if status.grpc_address or "grpc_address" in result:
            result["grpc_address"] = status.grpc_address
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
                    gpus=int(resources.get("gpus", 0)),
                    limits=PredictorLimits.of(config.get("limits")))  # fmt: skip
