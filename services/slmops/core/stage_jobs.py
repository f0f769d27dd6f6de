"""The control plane of one stage's jobs, shared by every job service.

It records a validated job, submits it to Ray, follows the Ray job's state and
log (turning progress lines into events), and answers Get/List/Cancel/Watch.
It knows nothing of gRPC: servicers translate protobuf to and from it.

Replicas on one database share the work through owner leases (core/jobstore):
a replica follows only the jobs it has claimed, renews each lease while it
polls, and a sweep every third of the lease claims unfinished jobs whose
owner stopped renewing (a replica that died) or that nobody holds (after a
restart). A job is submitted under the Ray submission id `slmops-<job id>`,
so a replica that finds no Ray id recorded asks Ray for that id before
submitting: a service killed between submitting and recording finds its Ray
job again. A failed status poll is retried with backoff, never taken as the
job's failure. Cancel reports CANCELLED only once Ray has stopped the work.
Database calls run in worker threads, off the event loop, and Watch wakes on
this replica's own events (polling slowly for other replicas' writes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import Conflict, Unavailable
from slmops.core.jobstore import Event, JobRecord, JobStore, LeaseLost
from slmops.core.progress import parse_line
from slmops.core.ray_jobs import RayJobs

log = logging.getLogger(__name__)

LEASE_S = 30.0  # how long a claim lasts without renewal
WATCH_POLL_S = 1.0  # how often Watch looks for events written by other replicas
MAX_POLL_BACKOFF_S = 30.0
# The artifact kind each stage writes.
OUTPUT_KIND = {"synthesis": "dataset", "training": "checkpoint", "conversion": "onnx-model", "evaluation": "report"}


def _error_reason(logs: str, fallback: str) -> str:
    """The most telling line of a failed job's log: our error line, else the last exception."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    for line in reversed(lines):
        if "SLMOPS_ERROR " in line:
            return line.split("SLMOPS_ERROR ", 1)[1]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[-500:]
    return fallback or "the job failed without a message"


class StageJobs:
    def __init__(
        self,
        stage: str,
        store: JobStore,
        ray: RayJobs,
        *,
        poll_s: float | None = None,
        lease_s: float = LEASE_S,
        owner: str = "",
    ):
        self.stage = stage
        self.store = store
        self.ray = ray
        self.poll_s = poll_s if poll_s is not None else float(settings.get("job_poll_s"))
        self.lease_s = lease_s
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._changed: dict[str, asyncio.Event] = {}

    # -- commands ---------------------------------------------------------

    def output_uri_for(self, job_id: str, requested: str) -> str:
        """Where the job writes: the requested location (confined, new or empty) or a new folder."""
        if requested:
            uri = artifacts.confine(requested, settings.allowed_roots(), "spec.output_uri")
            artifacts.check_new_output(uri, "spec.output_uri")
            return uri
        root = settings.artifact_root().rstrip("/")
        return f"{root}/{OUTPUT_KIND[self.stage]}s/{job_id}"

    async def create(
        self, config: dict[str, Any], spec: dict[str, Any], output_uri: str, labels: dict[str, str]
    ) -> JobRecord:
        job_id = f"{self.stage[:5]}-{uuid.uuid4().hex[:12]}"
        record = JobRecord(
            id=job_id,
            kind=self.stage,
            spec=spec,
            config=config,
            labels=dict(labels),
            output_uri=await asyncio.to_thread(self.output_uri_for, job_id, output_uri),
            trace_id=tracing.current_trace_id(),
            traceparent=tracing.current_traceparent(),
            message="queued",
        )
        await asyncio.to_thread(self.store.create, record)
        await self._event(job_id, "PENDING", 0.0, "queued")
        if await asyncio.to_thread(self.store.claim, job_id, self.owner, self.lease_s):
            self._follow(job_id)
        return record

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id, self.stage)

    def list(self, state: str | None, labels: dict[str, str], page_size: int, page_token: str):
        return self.store.list(self.stage, state, labels, page_size, page_token)

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop the job's Ray work and mark it CANCELLED; Unavailable when Ray could not stop it."""
        record = await asyncio.to_thread(self.store.get, job_id, self.stage)
        if record.finished:
            raise Conflict(f"job {job_id} already finished ({record.state}); nothing to cancel")
        ray_job_id = record.ray_job_id or await asyncio.to_thread(self._find, record.id)
        if ray_job_id and await asyncio.to_thread(self.ray.stop, ray_job_id) is False:
            status = await asyncio.to_thread(self.ray.status, ray_job_id)
            if status.state in ("PENDING", "RUNNING"):
                raise Unavailable(f"Ray could not stop job {job_id} ({ray_job_id}); it is still {status.state}")
        await asyncio.to_thread(self._finish, job_id, "CANCELLED", "cancelled by request")
        self._notify(job_id)
        task = self._tasks.pop(job_id, None)
        if task:
            task.cancel()
        return await asyncio.to_thread(self.store.get, job_id)

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        """Events after after_sequence, live, until the job has finished."""
        await asyncio.to_thread(self.store.get, job_id, self.stage)  # NotFound before streaming anything
        sequence = after_sequence
        changed = self._changed.setdefault(job_id, asyncio.Event())
        while True:
            changed.clear()
            for event in await asyncio.to_thread(self.store.events, job_id, sequence):
                sequence = event.sequence
                yield event
            record = await asyncio.to_thread(self.store.get, job_id)
            if record.finished and not await asyncio.to_thread(self.store.events, job_id, sequence):
                return
            try:
                await asyncio.wait_for(changed.wait(), WATCH_POLL_S)
            except TimeoutError:
                pass  # another replica may have written

    # -- following jobs ---------------------------------------------------

    def resume(self) -> None:
        """Start the sweep that claims and follows unfinished jobs (after a restart, or a dead replica's)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Stop following; the leases are released so another replica takes the jobs at once."""
        tasks = [t for t in (self._sweeper, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job_id in list(self._tasks):
            await asyncio.to_thread(self.store.release, job_id, self.owner)
        self._tasks.clear()
        self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            try:
                for job_id in await asyncio.to_thread(self.store.claimable, self.stage, self.owner):
                    if job_id in self._tasks:
                        continue
                    if await asyncio.to_thread(self.store.claim, job_id, self.owner, self.lease_s):
                        log.info("job %s: following it (owner %s)", job_id, self.owner)
                        self._follow(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweeping for unfinished %s jobs failed; trying again", self.stage)
            await asyncio.sleep(self.lease_s / 3)

    def _follow(self, job_id: str) -> None:
        self._tasks[job_id] = asyncio.get_running_loop().create_task(self._run(job_id))

    async def _run(self, job_id: str) -> None:
        try:
            record = await asyncio.to_thread(self.store.get, job_id)
            if not record.ray_job_id:
                await self._submit(record)
            await self._poll(job_id)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            log.info("job %s: %s; no longer following it", job_id, exc)
        except Unavailable as exc:
            log.warning("job %s: %s", job_id, exc)
            await asyncio.to_thread(self._finish, job_id, "FAILED", str(exc))
        except Exception as exc:
            log.exception("job %s: unexpected error while following it", job_id)
            await asyncio.to_thread(self._finish, job_id, "FAILED", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(job_id, None)
            self._notify(job_id)

    def _find(self, job_id: str) -> str:
        """The Ray submission of job_id if Ray has one (a submit whose id was never recorded)."""
        find = getattr(self.ray, "find", None)
        return find(self.stage, job_id) if find is not None else ""

    async def _submit(self, record: JobRecord) -> None:
        found = await asyncio.to_thread(self._find, record.id)
        if found:
            log.info("job %s: found its Ray job %s again", record.id, found)
            await asyncio.to_thread(self.store.update, record.id, owner=self.owner, ray_job_id=found,
                                    message="found its Ray job again")  # fmt: skip
            return
        ray_job_id = await asyncio.to_thread(
            self.ray.submit,
            self.stage,
            record.id,
            record.config,
            record.output_uri,
            record.traceparent,
        )
        await asyncio.to_thread(self.store.update, record.id, owner=self.owner, ray_job_id=ray_job_id,
                                message="submitted to Ray")  # fmt: skip

    async def _poll(self, job_id: str) -> None:
        backoff = self.poll_s
        while True:
            if not await asyncio.to_thread(self.store.claim, job_id, self.owner, self.lease_s):
                record = await asyncio.to_thread(self.store.get, job_id)
                if not record.finished:
                    raise LeaseLost(f"job {job_id} is followed by {record.owner} now")
                return
            record = await asyncio.to_thread(self.store.get, job_id)
            if record.finished:
                return
            try:
                status = await asyncio.to_thread(self.ray.status, record.ray_job_id)
                logs = await asyncio.to_thread(self.ray.logs, record.ray_job_id)
            except Unavailable as exc:  # Ray or the network hiccupped: the job itself may be fine
                log.warning("job %s: %s; asking again in %.1fs", job_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_S, self.lease_s / 3)
                continue
            backoff = self.poll_s
            result = await asyncio.to_thread(self._consume_logs, record, logs)
            if status.state == "RUNNING" and record.state == "PENDING":
                await asyncio.to_thread(self.store.update, job_id, owner=self.owner, state="RUNNING")
                await self._event(job_id, "RUNNING", record.fraction, "running")
            if status.state == "SUCCEEDED":
                await asyncio.to_thread(self._succeed, job_id, result or {})
                return
            if status.state in ("FAILED", "STOPPED"):
                reason = _error_reason(logs, status.message)
                await asyncio.to_thread(self._finish, job_id, "FAILED" if status.state == "FAILED" else "CANCELLED", reason)
                return
            self._notify(job_id)
            await asyncio.sleep(self.poll_s)

    async def _event(self, job_id: str, state: str, fraction: float, message: str) -> None:
        await asyncio.to_thread(self.store.add_event, job_id, state, fraction, message)
        self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        changed = self._changed.get(job_id)
        if changed is not None:
            changed.set()

    def _consume_logs(self, record: JobRecord, logs: str) -> dict[str, Any] | None:
        new = logs[record.log_offset :]
        cut = new.rfind("\n") + 1  # only whole lines
        result = None
        fraction, message = record.fraction, record.message
        for line in new[:cut].splitlines():
            parsed = parse_line(line)
            if parsed is None:
                continue
            kind, payload = parsed
            if kind == "result":
                result = payload
                continue
            fraction = float(payload.get("fraction", fraction))
            message = str(payload.get("message", ""))
            self.store.add_event(record.id, "RUNNING", fraction, message, payload.get("metrics") or {})
        if cut:
            self.store.update(record.id, owner=self.owner, log_offset=record.log_offset + cut,
                              fraction=fraction, message=message)  # fmt: skip
        if result is None and record.result:
            result = record.result
        elif result is not None:
            self.store.update(record.id, owner=self.owner, result=result)
        return result

    def _succeed(self, job_id: str, result: dict[str, Any]) -> None:
        output = result.get("output_uri") or self.store.get(job_id).output_uri
        self.store.update(job_id, state="SUCCEEDED", fraction=1.0, message="done", result=result, output_uri=output)
        self.store.add_event(job_id, "SUCCEEDED", 1.0, "done", _numbers(result.get("metrics", {})))
        self.store.release(job_id, self.owner)

    def _finish(self, job_id: str, state: str, reason: str) -> None:
        record = self.store.get(job_id)
        if record.finished:
            return
        self.store.update(job_id, state=state, reason=reason, message=reason)
        self.store.add_event(job_id, state, record.fraction, reason)
        self.store.release(job_id, record.owner)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
