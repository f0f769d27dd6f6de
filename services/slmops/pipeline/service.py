"""The pipeline service: runs pipeline files by calling the stage services over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from google.protobuf import json_format

from slmops.api.v1 import common_pb2, pipeline_pb2, pipeline_pb2_grpc
from slmops.core import tracing
from slmops.core.errors import InvalidSpec, collect
from slmops.core.jobs.lifecycle import Lifecycle, Update
from slmops.core.jobs.servicer import (
    event_proto,
    message_to_dict,
    require_id,
    state_name,
    status_proto,
)
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.core.server import Registration
from slmops.pipeline.definition import Definition, parse
from slmops.pipeline.runner import PipelineRunner, StageCache, check_inputs
from slmops.pipeline.stages import validate_all

SERVICE_NAME = pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name
KIND = "pipeline"


class PipelineEngine:
    """The lifecycle's engine for pipeline runs: a PipelineRunner task in this process per run.

    A run's work lives in the process that follows it, so after a restart (or
    on the replica that takes a dead one's run over) there is nothing to find:
    submitting again resumes the run from the stages its record holds.
    """

    def __init__(self, store: JobStore, cache: StageCache | None = None):
        self.store = store
        self.cache = cache or StageCache(store)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.runners: dict[str, PipelineRunner] = {}

    async def find(self, record: JobRecord) -> str:
        return ""

    async def attached(self, record: JobRecord) -> bool:
        task = self.tasks.get(record.id)
        return task is not None and not task.done()

    async def submit(self, record: JobRecord) -> str:
        definition = await asyncio.to_thread(parse, record.spec.get("definition_yaml", ""))
        recorded = record.result.get("stages", [])
        runner = PipelineRunner(self.store, record.id, definition, recorded=recorded, cache=self.cache,
                                traceparent=record.traceparent)  # fmt: skip
        if recorded:
            await asyncio.to_thread(self.store.add_event, record.id, "RUNNING", record.fraction,
                                    "resumed after the pipeline service restarted")  # fmt: skip
        self.runners[record.id] = runner
        self.tasks[record.id] = asyncio.get_running_loop().create_task(runner.run())
        return f"in-process:{record.id}"

    async def poll(self, record: JobRecord) -> Update:
        task = self.tasks.get(record.id)
        if task is None or not task.done():
            return Update(state="RUNNING" if task is not None else "")
        self.tasks.pop(record.id, None)
        self.runners.pop(record.id, None)
        if task.cancelled():
            return Update(state="STOPPED", reason="the run was stopped")
        error = task.exception()
        reason = (
            f"internal error: {type(error).__name__}: {error}" if error else "the run ended without a verdict"
        )
        return Update(state="FAILED", reason=reason)  # a runner that finished has written its own state

    async def stop(self, record: JobRecord) -> bool:
        runner, task = self.runners.pop(record.id, None), self.tasks.pop(record.id, None)
        if task is not None:
            task.cancel()
        if runner is not None:
            await asyncio.to_thread(runner.cancel_current)
        return True

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()


class PipelineRuns(Lifecycle):
    """Pipeline runs on the shared lifecycle (no gRPC here)."""

    def __init__(self, store: JobStore, cache: StageCache | None = None, *, check_stages: bool = True,
                 **options: Any):  # fmt: skip
        super().__init__(KIND, store, PipelineEngine(store, cache), **{"poll_s": 0.5, **options})
        self.check_stages = check_stages

    async def create(self, spec: dict[str, Any], validate_only: bool = False) -> JobRecord | None:
        """Check the file, then its inputs and every stage's spec with its own service, before anything
        runs (in worker threads: a large file takes a while to parse)."""
        text = spec.get("definition_yaml", "")
        definition = await asyncio.to_thread(parse, text if isinstance(text, str) else "")
        await asyncio.to_thread(self.check, definition)
        if validate_only:
            return None
        run_id = f"pipe-{uuid.uuid4().hex[:12]}"
        with tracing.tracer().start_as_current_span("pipeline.create", attributes={"slmops.run_id": run_id}):
            record = JobRecord(id=run_id, kind=KIND, spec=spec, labels=dict(spec.get("labels", {})),
                               trace_id=tracing.current_trace_id(), traceparent=tracing.current_traceparent(),
                               message="queued")  # fmt: skip
        await self.record(record, f"stages: {', '.join(definition.order())}")
        return await asyncio.to_thread(self.store.get, run_id)

    def check(self, definition: Definition) -> None:
        """The input stages' URIs and (check_stages) every stage's spec; every problem at once."""
        problems: list[tuple[str, str]] = []
        checks = (check_inputs, validate_all) if self.check_stages else (check_inputs,)
        for check in checks:
            try:
                check(definition)
            except InvalidSpec as exc:
                problems.extend(exc.problems)
        collect(problems)

    async def close(self) -> None:
        await super().close()
        await self.engine.close()


def run_proto(record: JobRecord) -> pipeline_pb2.PipelineRun:
    spec = json_format.ParseDict(record.spec, pipeline_pb2.PipelineSpec(), ignore_unknown_fields=True)
    run = pipeline_pb2.PipelineRun(id=record.id, spec=spec, status=status_proto(record, ""),
                                   report_uri=record.result.get("report_uri", ""))  # fmt: skip
    for stage in record.result.get("stages", []):
        run.stages.append(pipeline_pb2.StageStatus(
            name=stage["name"], job_id=stage.get("job_id", ""), state=common_pb2.JobState.Value(stage["state"]),
            output=common_pb2.ArtifactRef(uri=stage.get("output", "")), reason=stage.get("reason", ""),
            kind=stage.get("kind", ""), reused=bool(stage.get("reused")), key=stage.get("key", ""),
            message=stage.get("message", ""), seconds=float(stage.get("seconds", 0.0)),
            detail={k: str(v) for k, v in stage.get("detail", {}).items()}))  # fmt: skip
    for entry in record.result.get("lineage", []):
        run.lineage.append(common_pb2.ArtifactRef(uri=entry["uri"], kind=entry["kind"]))
    return run


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    def __init__(self, runs: PipelineRuns):
        self.runs = runs

    async def CreatePipelineRun(self, request: pipeline_pb2.CreatePipelineRunRequest, context: Any):
        if not request.HasField("spec"):
            raise InvalidSpec("spec", "is required")
        record = await self.runs.create(message_to_dict(request.spec), validate_only=request.validate_only)
        if record is None:
            return pipeline_pb2.PipelineRun(spec=request.spec)
        return run_proto(record)

    async def GetPipelineRun(self, request: common_pb2.GetJobRequest, context: Any):
        return run_proto(await asyncio.to_thread(self.runs.store.get, require_id(request.id), KIND))

    async def ListPipelineRuns(self, request: common_pb2.ListJobsRequest, context: Any):
        records, token = await asyncio.to_thread(
            self.runs.store.list,
            KIND,
            state_name(request.state),
            dict(request.labels),
            request.page_size,
            request.page_token,
        )
        return pipeline_pb2.ListPipelineRunsResponse(
            runs=[run_proto(r) for r in records], next_page_token=token
        )

    async def CancelPipelineRun(self, request: common_pb2.CancelJobRequest, context: Any):
        return run_proto(await self.runs.cancel(require_id(request.id)))

    async def WatchPipelineRun(self, request: common_pb2.WatchJobRequest, context: Any):
        if request.after_sequence < 0:
            raise InvalidSpec("after_sequence", "must not be negative")
        async for event in self.runs.watch(require_id(request.id), request.after_sequence):
            yield event_proto(event)


def registration(runs: PipelineRuns) -> Registration:
    return Registration(
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server, PipelineServicer(runs), SERVICE_NAME
    )
