"""The control plane of one stage's jobs, shared by every job service.

It records a validated job, submits it to Ray, follows the Ray job's state and
log (turning progress lines into events), and answers Get/List/Cancel/Watch.
It knows nothing of gRPC: servicers translate protobuf to and from it.
A service that restarts resumes following every unfinished job.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from slmops.core import artifacts, settings, tracing
from slmops.core.errors import Conflict, Unavailable
from slmops.core.jobstore import Event, JobRecord, JobStore
from slmops.core.progress import parse_line
from slmops.core.ray_jobs import RayJobs

log = logging.getLogger(__name__)

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
    ):
        self.stage = stage
        self.store = store
        self.ray = ray
        self.poll_s = poll_s if poll_s is not None else float(settings.get("job_poll_s"))
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- commands ---------------------------------------------------------

    def output_uri_for(self, job_id: str, requested: str) -> str:
        if requested:
            return artifacts.confine(requested, settings.allowed_roots(), "spec.output_uri")
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
            output_uri=self.output_uri_for(job_id, output_uri),
            trace_id=tracing.current_trace_id(),
            traceparent=tracing.current_traceparent(),
            message="queued",
        )
        self.store.create(record)
        self.store.add_event(job_id, "PENDING", 0.0, "queued")
        self._follow(job_id)
        return record

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id, self.stage)

    def list(self, state: str | None, labels: dict[str, str], page_size: int, page_token: str):
        return self.store.list(self.stage, state, labels, page_size, page_token)

    async def cancel(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id, self.stage)
        if record.finished:
            raise Conflict(f"job {job_id} already finished ({record.state}); nothing to cancel")
        if record.ray_job_id:
            await asyncio.to_thread(self.ray.stop, record.ray_job_id)
        self._finish(job_id, "CANCELLED", reason="cancelled by request")
        task = self._tasks.pop(job_id, None)
        if task:
            task.cancel()
        return self.store.get(job_id)

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[Event]:
        """Events after after_sequence, live, until the job has finished."""
        self.store.get(job_id, self.stage)  # NotFound before streaming anything
        sequence = after_sequence
        while True:
            for event in self.store.events(job_id, sequence):
                sequence = event.sequence
                yield event
            if self.store.get(job_id).finished and not self.store.events(job_id, sequence):
                return
            await asyncio.sleep(0.2)

    # -- following jobs ---------------------------------------------------

    def resume(self) -> None:
        """Follow every unfinished job again (after a restart)."""
        for record in self.store.unfinished(self.stage):
            self._follow(record.id)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def _follow(self, job_id: str) -> None:
        self._tasks[job_id] = asyncio.get_running_loop().create_task(self._run(job_id))

    async def _run(self, job_id: str) -> None:
        try:
            record = self.store.get(job_id)
            if not record.ray_job_id:
                await self._submit(record)
            await self._poll(job_id)
        except asyncio.CancelledError:
            raise
        except Unavailable as exc:
            log.warning("job %s: %s", job_id, exc)
            self._finish(job_id, "FAILED", reason=str(exc))
        except Exception as exc:
            log.exception("job %s: unexpected error while following it", job_id)
            self._finish(job_id, "FAILED", reason=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(job_id, None)

    async def _submit(self, record: JobRecord) -> None:
        ray_job_id = await asyncio.to_thread(
            self.ray.submit,
            self.stage,
            record.id,
            record.config,
            record.output_uri,
            record.traceparent,
        )
        self.store.update(record.id, ray_job_id=ray_job_id, message="submitted to Ray")

    async def _poll(self, job_id: str) -> None:
        while True:
            record = self.store.get(job_id)
            if record.finished:
                return
            status = await asyncio.to_thread(self.ray.status, record.ray_job_id)
            logs = await asyncio.to_thread(self.ray.logs, record.ray_job_id)
            result = self._consume_logs(record, logs)
            if status.state == "RUNNING" and record.state == "PENDING":
                self.store.update(job_id, state="RUNNING")
                self.store.add_event(job_id, "RUNNING", record.fraction, "running")
            if status.state == "SUCCEEDED":
                self._succeed(job_id, result or {})
                return
            if status.state in ("FAILED", "STOPPED"):
                reason = _error_reason(logs, status.message)
                self._finish(job_id, "FAILED" if status.state == "FAILED" else "CANCELLED", reason=reason)
                return
            await asyncio.sleep(self.poll_s)

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
            self.store.update(record.id, log_offset=record.log_offset + cut, fraction=fraction, message=message)
        if result is None and record.result:
            result = record.result
        elif result is not None:
            self.store.update(record.id, result=result)
        return result

    def _succeed(self, job_id: str, result: dict[str, Any]) -> None:
        output = result.get("output_uri") or self.store.get(job_id).output_uri
        self.store.update(job_id, state="SUCCEEDED", fraction=1.0, message="done", result=result, output_uri=output)
        self.store.add_event(job_id, "SUCCEEDED", 1.0, "done", _numbers(result.get("metrics", {})))

    def _finish(self, job_id: str, state: str, reason: str) -> None:
        record = self.store.get(job_id)
        if record.finished:
            return
        self.store.update(job_id, state=state, reason=reason, message=reason)
        self.store.add_event(job_id, state, record.fraction, reason)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
