"""The pipeline service: runs pipeline files by calling the stage services over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format

from slmops.api.v1 import common_pb2, pipeline_pb2, pipeline_pb2_grpc
from slmops.core import tracing
from slmops.core.errors import Conflict, InvalidSpec
from slmops.core.job_servicer import (
    event_proto,
    message_to_dict,
    require_id,
    state_name,
    status_proto,
)
from slmops.core.jobstore import Event, JobRecord, JobStore
from slmops.core.server import Registration
from slmops.pipeline.definition import parse
from slmops.pipeline.runner import PipelineRunner

SERVICE_NAME = pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name
KIND = "pipeline"


class PipelineRuns:
    """Records and tasks of pipeline runs (no gRPC here)."""

    def __init__(self, store: JobStore):
        self.store = store
        self._runners: dict[str, PipelineRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def create(self, spec: dict[str, Any]) -> JobRecord:
        definition = parse(spec.get("definition_yaml", ""))
        run_id = f"pipe-{uuid.uuid4().hex[:12]}"
        record = JobRecord(id=run_id, kind=KIND, spec=spec, labels=dict(spec.get("labels", {})),
                           trace_id=tracing.current_trace_id(), message="queued")
        self.store.create(record)
        self.store.add_event(run_id, "PENDING", 0.0, f"stages: {', '.join(definition.order())}")
        runner = PipelineRunner(self.store, run_id, definition)
        self._runners[run_id] = runner
        self._tasks[run_id] = asyncio.get_running_loop().create_task(self._run(runner))
        return self.store.get(run_id)

    async def _run(self, runner: PipelineRunner) -> None:
        try:
            await runner.run()
        finally:
            self._tasks.pop(runner.run_id, None)
            self._runners.pop(runner.run_id, None)

    async def cancel(self, run_id: str) -> JobRecord:
        record = self.store.get(run_id, KIND)
        if record.finished:
            raise Conflict(f"pipeline run {run_id} already finished ({record.state}); nothing to cancel")
        runner = self._runners.get(run_id)
        task = self._tasks.pop(run_id, None)
        if task:
            task.cancel()
        if runner:
            await asyncio.to_thread(runner.cancel_current)
        self.store.update(run_id, state="CANCELLED", reason="cancelled by request", message="cancelled")
        self.store.add_event(run_id, "CANCELLED", record.fraction, "cancelled by request")
        return self.store.get(run_id)

    async def watch(self, run_id: str, after: int) -> AsyncIterator[Event]:
        self.store.get(run_id, KIND)
        while True:
            for event in self.store.events(run_id, after):
                after = event.sequence
                yield event
            if self.store.get(run_id).finished and not self.store.events(run_id, after):
                return
            await asyncio.sleep(0.3)

    def resume_interrupted(self) -> list[str]:
        """Resume every run that was in flight when the service stopped; their ids."""
        resumed = []
        for record in self.store.unfinished(KIND):
            try:
                definition = parse(record.spec.get("definition_yaml", ""))
            except InvalidSpec as exc:
                self.store.update(record.id, state="FAILED", reason=str(exc), message=str(exc))
                self.store.add_event(record.id, "FAILED", record.fraction, str(exc))
                continue
            runner = PipelineRunner(self.store, record.id, definition, recorded=record.result.get("stages", []))
            self.store.add_event(record.id, "RUNNING", record.fraction, "resumed after the pipeline service restarted")
            self._runners[record.id] = runner
            self._tasks[record.id] = asyncio.get_running_loop().create_task(self._run(runner))
            resumed.append(record.id)
        return resumed

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


def run_proto(record: JobRecord) -> pipeline_pb2.PipelineRun:
    spec = json_format.ParseDict(record.spec, pipeline_pb2.PipelineSpec(), ignore_unknown_fields=True)
    run = pipeline_pb2.PipelineRun(id=record.id, spec=spec, status=status_proto(record, ""))
    for stage in record.result.get("stages", []):
        run.stages.append(pipeline_pb2.StageStatus(
            name=stage["name"], job_id=stage.get("job_id", ""), state=common_pb2.JobState.Value(stage["state"]),
            output=common_pb2.ArtifactRef(uri=stage.get("output", "")), reason=stage.get("reason", "")))
    return run


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    def __init__(self, runs: PipelineRuns):
        self.runs = runs

    async def CreatePipelineRun(self, request: pipeline_pb2.CreatePipelineRunRequest, context: Any):
        if not request.HasField("spec"):
            raise InvalidSpec("spec", "is required")
        return run_proto(await self.runs.create(message_to_dict(request.spec)))

    async def GetPipelineRun(self, request: common_pb2.GetJobRequest, context: Any):
        return run_proto(self.runs.store.get(require_id(request.id), KIND))

    async def ListPipelineRuns(self, request: common_pb2.ListJobsRequest, context: Any):
        records, token = self.runs.store.list(KIND, state_name(request.state), dict(request.labels),
                                              request.page_size, request.page_token)
        return pipeline_pb2.ListPipelineRunsResponse(runs=[run_proto(r) for r in records], next_page_token=token)

    async def CancelPipelineRun(self, request: common_pb2.CancelJobRequest, context: Any):
        return run_proto(await self.runs.cancel(require_id(request.id)))

    async def WatchPipelineRun(self, request: common_pb2.WatchJobRequest, context: Any):
        if request.after_sequence < 0:
            raise InvalidSpec("after_sequence", "must not be negative")
        async for event in self.runs.watch(require_id(request.id), request.after_sequence):
            yield event_proto(event)


def registration(runs: PipelineRuns) -> Registration:
    return Registration(pipeline_pb2_grpc.add_PipelineServiceServicer_to_server, PipelineServicer(runs), SERVICE_NAME)
