"""The control plane of one stage's jobs, shared by every job service: the lifecycle on Ray.

`StageJobs` is the shared lifecycle (core/jobs/lifecycle.py: record, submit once,
follow under an owner lease, cancel, resume) with `RayEngine`: each job is a
Ray job submitted under the id `slmops-<job id>`, whose log carries progress
lines and the result. It knows nothing of gRPC: servicers translate protobuf
to and from it.

Ray is asked on the Ray threads (`ray_jobs.call`), each call bounded by the Ray
timeout. A job Ray no longer knows (its head restarted and lost it) ends FAILED
saying so, at the first poll that learns it; a stage that continues from its
checkpoint (RESTARTABLE) is submitted again instead, like a job whose process
died, at most MAX_RESTARTS times. Cancel of such a job succeeds: there is
nothing left to stop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_fixed

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import Unavailable
from slmops.core.jobs.lifecycle import Lifecycle, Update
from slmops.core.jobs.ray_jobs import AGENT_WAIT_S, RUNNING_STATES, RayJobLost, RayJobs, call, ray_timeout
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.core.progress import parse_line

log = logging.getLogger(__name__)

# The artifact kind each stage writes.
# Stages whose job continues from what it had committed when started again (synthesis: its checkpoint),
# so a job whose process died without a word (killed, out of memory) is restarted, at most MAX_RESTARTS times.
RESTARTABLE = frozenset({"synthesis"})
MAX_RESTARTS = 2
STOP_WAIT_S = 15.0  # how long Cancel waits for a signalled job to end (the stack gives it 10 s, then SIGKILL)
MAX_TAIL_BREAKS = 3  # log streams of one job that may break off before its log is read whole at each poll
OUTPUT_KIND = {
    "synthesis": "dataset",
    "training": "checkpoint",
    "conversion": "onnx-model",
    "evaluation": "report",
}


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


class LogTail:
    """One Ray job's log as its stream (`RayJobs.tail`) delivers it, read in the background."""

    def __init__(self, chunks: AsyncIterator[str]):
        self._chunks: list[str] = []
        self.error: Exception | None = None
        self._task = asyncio.create_task(self._read(chunks))

    async def _read(self, chunks: AsyncIterator[str]) -> None:
        try:
            async for chunk in chunks:
                self._chunks.append(chunk)
        except Exception as exc:  # Unavailable: the stream broke off, or never opened
            self.error = exc

    @property
    def text(self) -> str:
        """The log so far, from the job's start."""
        if len(self._chunks) > 1:
            self._chunks[:] = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def whole(self) -> bool:
        """Whether the stream has ended by itself, unbroken: its text is the job's whole log."""
        return self._task.done() and not self.broken

    def close(self) -> None:
        self._task.cancel()


class RayEngine:
    """Stage jobs as Ray jobs: submitted through the Jobs API, observed through their state and log.

    A job's log is followed as Ray streams it (one `LogTail` per Ray job), not downloaded at each
    poll; a stream that breaks off is opened again, and that poll reads the whole log once instead.
    """

    def __init__(self, stage: str, ray: RayJobs):
        self.stage, self.ray = stage, ray
        self._tails: dict[str, LogTail] = {}
        self._breaks: Counter[str] = Counter()

    async def find(self, record: JobRecord) -> str:
        find = getattr(self.ray, "find", None)
        return await call(find, self.stage, record.id) if find is not None else ""

    async def attached(self, record: JobRecord) -> bool:
        return True  # Ray keeps its jobs whichever replica asks

    async def submit(self, record: JobRecord) -> str:
        return await call(self.ray.submit, self.stage, record.id, record.config, record.output_uri,
                          record.traceparent, deadline=_submit_deadline())  # fmt: skip

    async def poll(self, record: JobRecord) -> Update:
        try:
            status = await call(self.ray.status, record.ray_job_id)
        except RayJobLost as exc:
            self.forget(record.ray_job_id)
            log.warning("%s %s: %s", self.stage, record.id, exc)
            lost = Update(state="FAILED", reason=str(exc))
            return await self._restart(record, lost) if self.stage in RESTARTABLE else lost
        logs = await self._log(record.ray_job_id, ended=status.state not in RUNNING_STATES)
        new = logs[record.log_offset :]
        cut = new.rfind("\n") + 1  # only whole lines
        update = Update(state=status.state, cursor=record.log_offset + cut)
        for line in new[:cut].splitlines():
            parsed = parse_line(line)
            if parsed is None:
                continue
            kind, payload = parsed
            if kind == "result":
                update.result = payload
            else:
                update.events.append((float(payload.get("fraction", record.fraction)),
                                      str(payload.get("message", "")), payload.get("metrics") or {}))  # fmt: skip
        if status.state in ("FAILED", "STOPPED"):
            update.reason = _error_reason(logs, status.message)
        if status.state == "FAILED" and self.stage in RESTARTABLE and "SLMOPS_ERROR " not in logs:
            return await self._restart(record, update)
        return update

    async def _log(self, submission_id: str, ended: bool) -> str:
        """The job's log so far as its stream delivered it; the whole log once the job has ended."""
        tail = self._tails.get(submission_id)
        if ended:
            # The stream may still be delivering the last lines when Ray reports the end: unless it has
            # ended by itself, the log is read whole, once (never waited for: a poll holds the lease).
            whole = tail is not None and tail.whole
            text = tail.text if tail is not None else ""
            self.forget(submission_id)
            if whole:
                return text
        elif tail is None and self._breaks[submission_id] < MAX_TAIL_BREAKS:
            self._tails[submission_id] = LogTail(self.ray.tail(submission_id))
            return ""
        elif tail is not None and not tail.broken:
            return tail.text
        elif tail is not None:
            log.info("%s: the log stream of Ray job %s broke off: %s", self.stage, submission_id, tail.error)
            self._tails.pop(submission_id)
            self._breaks[submission_id] += 1
        # Read whole: the job has ended, or its stream broke off (opened again at the next poll, a
        # bounded number of times); Ray's dashboards that serve no websocket end up here too.
        return await call(self.ray.logs, submission_id)

    def forget(self, submission_id: str | None = None) -> None:
        """Close the log stream of a job no longer followed here (of every job when None)."""
        for name in [submission_id] if submission_id else list(self._tails):
            tail = self._tails.pop(name, None)
            if tail is not None:
                tail.close()
            self._breaks.pop(name, None)

    async def _restart(self, record: JobRecord, died: Update) -> Update:
        """Start a job whose process died again (it continues from its checkpoint), or let it fail."""
        match = re.search(r"-r(\d+)$", record.ray_job_id)
        restarts = int(match.group(1)) if match else 0
        if restarts >= MAX_RESTARTS:
            died.reason = f"{died.reason} (after {restarts} restarts)"
            return died
        handle = await call(self.ray.submit, self.stage, record.id, record.config, record.output_uri,
                            record.traceparent, restart=restarts + 1, deadline=_submit_deadline())  # fmt: skip
        fraction = died.events[-1][0] if died.events else record.fraction
        said = (f"the job's process ended without finishing ({died.reason}); started it again "
                f"({restarts + 1} of {MAX_RESTARTS} restarts): it continues from what it had committed")  # fmt: skip
        log.warning("%s %s: %s", self.stage, record.id, said)
        return Update(state="RUNNING", events=[*died.events, (fraction, said, {})], cursor=0, handle=handle)

    async def stop(self, record: JobRecord) -> bool:
        """True once the job has stopped or ended, or Ray no longer knows it; False when it runs on."""
        if await call(self.ray.stop, record.ray_job_id) is not False:
            # Ray signals the job and returns: wait (a little) for it to end, so what the job keeps
            # on its way out (a synthesis job seals what was answered) is there when Cancel answers.
            async def state() -> str:
                try:
                    return (await call(self.ray.status, record.ray_job_id)).state
                except Unavailable:
                    return ""  # Ray cannot say (or lost the job): stop waiting

            waiting = AsyncRetrying(stop=stop_after_delay(STOP_WAIT_S), wait=wait_fixed(0.25),
                                    retry=retry_if_result(lambda s: s in RUNNING_STATES),
                                    retry_error_callback=lambda _: "")  # fmt: skip
            await waiting(state)
            return True
        try:
            status = await call(self.ray.status, record.ray_job_id)
        except RayJobLost as exc:
            log.info("%s %s: %s; nothing to stop", self.stage, record.id, exc)
            return True
        return status.state not in ("PENDING", "RUNNING")  # it had ended by itself


def _submit_deadline() -> float:
    """How long a submission may take: the wait for a starting head's job agent, then its requests."""
    return AGENT_WAIT_S + 3 * ray_timeout()


class StageJobs(Lifecycle):
    def __init__(
        self,
        stage: str,
        store: JobStore,
        ray: RayJobs,
        *,
        poll_s: float | None = None,
        lease_s: float | None = None,
        owner: str = "",
    ):
        self.ray_engine = RayEngine(stage, ray)
        super().__init__(stage, store, self.ray_engine, poll_s=poll_s, lease_s=lease_s, owner=owner)
        self.stage = stage
        self.ray = ray

    async def close(self) -> None:
        await super().close()
        self.ray_engine.forget()

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
        return await self.record(record)
