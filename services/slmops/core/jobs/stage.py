"""The control plane of one stage's jobs, shared by every job service: the lifecycle on Ray.

`StageJobs` is the shared lifecycle (core/jobs/lifecycle.py: record, submit once,
follow under an owner lease, cancel, resume) with `RayEngine`: each job is a
Ray job submitted under the id `slmops-<job id>`, whose log carries progress
lines and the result. It knows nothing of gRPC: servicers translate protobuf
to and from it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import Unavailable
from slmops.core.jobs.lifecycle import Lifecycle, Update
from slmops.core.jobs.ray_jobs import RayJobs
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.core.progress import parse_line

log = logging.getLogger(__name__)

# The artifact kind each stage writes.
# Stages whose job continues from what it had committed when started again (synthesis: its checkpoint),
# so a job whose process died without a word (killed, out of memory) is restarted, at most MAX_RESTARTS times.
RESTARTABLE = frozenset({"synthesis"})
MAX_RESTARTS = 2
STOP_WAIT_S = 15.0  # how long Cancel waits for a signalled job to end (the stack gives it 10 s, then SIGKILL)
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


class RayEngine:
    """Stage jobs as Ray jobs: submitted through the Jobs API, observed through their state and log."""

    def __init__(self, stage: str, ray: RayJobs):
        self.stage, self.ray = stage, ray

    async def find(self, record: JobRecord) -> str:
        find = getattr(self.ray, "find", None)
        return await asyncio.to_thread(find, self.stage, record.id) if find is not None else ""

    async def attached(self, record: JobRecord) -> bool:
        return True  # Ray keeps its jobs whichever replica asks

    async def submit(self, record: JobRecord) -> str:
        return await asyncio.to_thread(self.ray.submit, self.stage, record.id, record.config, record.output_uri,
                                       record.traceparent)  # fmt: skip

    async def poll(self, record: JobRecord) -> Update:
        status = await asyncio.to_thread(self.ray.status, record.ray_job_id)
        logs = await asyncio.to_thread(self.ray.logs, record.ray_job_id)
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

    async def _restart(self, record: JobRecord, died: Update) -> Update:
        """Start a job whose process died again (it continues from its checkpoint), or let it fail."""
        match = re.search(r"-r(\d+)$", record.ray_job_id)
        restarts = int(match.group(1)) if match else 0
        if restarts >= MAX_RESTARTS:
            died.reason = f"{died.reason} (after {restarts} restarts)"
            return died
        handle = await asyncio.to_thread(self.ray.submit, self.stage, record.id, record.config, record.output_uri,
                                         record.traceparent, restart=restarts + 1)  # fmt: skip
        fraction = died.events[-1][0] if died.events else record.fraction
        said = (f"the job's process ended without finishing ({died.reason}); started it again "
                f"({restarts + 1} of {MAX_RESTARTS} restarts): it continues from what it had committed")  # fmt: skip
        log.warning("%s %s: %s", self.stage, record.id, said)
        return Update(state="RUNNING", events=[*died.events, (fraction, said, {})], cursor=0, handle=handle)

    async def stop(self, record: JobRecord) -> bool:
        if await asyncio.to_thread(self.ray.stop, record.ray_job_id) is not False:
            # Ray signals the job and returns: wait (a little) for it to end, so what the job keeps
            # on its way out (a synthesis job seals what was answered) is there when Cancel answers.
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                try:
                    status = await asyncio.to_thread(self.ray.status, record.ray_job_id)
                except Unavailable:
                    break
                if status.state not in ("PENDING", "RUNNING"):
                    break
                await asyncio.sleep(0.25)
            return True
        status = await asyncio.to_thread(self.ray.status, record.ray_job_id)
        return status.state not in ("PENDING", "RUNNING")  # it had ended by itself


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
        super().__init__(stage, store, RayEngine(stage, ray), poll_s=poll_s, lease_s=lease_s, owner=owner)
        self.stage = stage
        self.ray = ray

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
