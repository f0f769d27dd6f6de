"""The five job RPCs every stage service offers, written once.

A stage's servicer subclasses JobServicer, names its protobuf types and
validator, and binds Create/Get/List/Cancel/Watch<Noun> to these methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel

from slmops.api.v1 import common_pb2
from slmops.core import artifacts
from slmops.core.errors import InvalidSpec, Unavailable, collect, validate_pending
from slmops.core.jobs.ray_jobs import RayJobs, call
from slmops.core.jobs.stage import OUTPUT_KIND, StageJobs
from slmops.core.jobs.store import Event, JobRecord
from slmops.core.spec_checks import check_labels

log = logging.getLogger(__name__)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def message_to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def state_name(value: int) -> str | None:
    return None if value == common_pb2.JOB_STATE_UNSPECIFIED else common_pb2.JobState.Name(value)


def status_proto(record: JobRecord, output_kind: str) -> common_pb2.JobStatus:
    metrics = record.result.get("metrics", {}) if record.result else {}
    status = common_pb2.JobStatus(
        state=common_pb2.JobState.Value(record.state),
        reason=record.reason,
        fraction=record.fraction,
        message=record.message,
        trace_id=record.trace_id,
        ray_job_id=record.ray_job_id,
        create_time=timestamp(record.created),
        update_time=timestamp(record.updated),
    )
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            status.metrics[key] = float(value)
    kept = record.state == "CANCELLED" and record.output_uri and artifacts.is_artifact(record.output_uri)
    if (
        record.state == "SUCCEEDED" or kept
    ) and record.output_uri:  # a cancelled job may keep what it finished
        # A job that can write several kinds (training: checkpoint or adapter) names its own.
        kind = (record.result or {}).get("kind") or output_kind
        status.output.CopyFrom(common_pb2.ArtifactRef(uri=record.output_uri, kind=str(kind)))
    return status


def event_proto(event: Event) -> common_pb2.ProgressEvent:
    proto = common_pb2.ProgressEvent(
        job_id=event.job_id,
        sequence=event.sequence,
        state=common_pb2.JobState.Value(event.state),
        fraction=event.fraction,
        message=event.message,
        time=timestamp(event.time),
    )
    for key, value in event.metrics.items():
        proto.metrics[key] = float(value)
    return proto


def checked(check: Callable[[Any], Any], spec: Any, pending: list[str] | tuple[str, ...] = ()) -> Any:
    """check(spec) as validate_pending runs it, the spec's labels checked too: every problem at once."""
    problems = check_labels(dict(getattr(spec, "labels", {})))
    try:
        result = validate_pending(check, spec, pending)
    except InvalidSpec as exc:
        collect([*exc.problems, *problems])
        raise
    collect(problems)
    return result


def require_id(value: str, field: str = "id") -> str:
    if not value.strip():
        raise InvalidSpec(field, "must name a job (got an empty string)")
    return value.strip()


class JobServicer:
    """Create/Get/List/Cancel/Watch for one stage; subclasses bind the RPC names.

    `validate` turns the spec into the job's config (InvalidSpec otherwise);
    the optional `precheck(config, ray)` then refuses what the cluster can
    never run (Conflict). Both run before the job is recorded: `validate` in a worker thread, with
    the spec's labels checked (core/spec_checks `check_labels`); `precheck`, which asks Ray, on the
    Ray threads. A request with `validate_only` runs them, records nothing and answers a job with no id.
    """

    job_cls: type[Message]
    list_cls: type[Message]
    spec_cls: type[Message]
    validate: Callable[[Any], BaseModel]
    precheck: Callable[[Any, RayJobs], None] | None = None

    def __init__(self, jobs: StageJobs):
        self.jobs = jobs
        self.output_kind = OUTPUT_KIND.get(jobs.stage, "")

    def to_job(self, record: JobRecord) -> Message:
        spec = json_format.ParseDict(record.spec, self.spec_cls(), ignore_unknown_fields=True)
        return self.job_cls(id=record.id, spec=spec, status=status_proto(record, self.output_kind))

    async def create(self, request: Any, context: Any) -> Message:
        if not request.HasField("spec"):
            raise InvalidSpec("spec", "is required")
        if request.validate_only:
            config = await asyncio.to_thread(
                checked, self.validate, request.spec, list(request.pending_fields)
            )
            if config is not None:
                await self._precheck(config)
            return self.job_cls(spec=request.spec)
        config = await asyncio.to_thread(checked, self.validate, request.spec)
        await self._precheck(config)
        record = await self.jobs.create(
            config.model_dump(mode="json"),
            message_to_dict(request.spec),
            getattr(request.spec, "output_uri", ""),
            dict(getattr(request.spec, "labels", {})),
        )
        return self.to_job(record)

    async def _precheck(self, config: Any) -> None:
        """Refuse what the cluster can never run; a Ray that does not answer in time is not asked."""
        if self.precheck is None:
            return
        try:
            await call(self.precheck, config, self.jobs.ray)
        except Unavailable as exc:
            log.warning("not checking the job against the cluster: %s", exc)

    async def get(self, request: common_pb2.GetJobRequest, context: Any) -> Message:
        return self.to_job(await asyncio.to_thread(self.jobs.get, require_id(request.id)))

    async def list(self, request: common_pb2.ListJobsRequest, context: Any) -> Message:
        records, token = await asyncio.to_thread(
            self.jobs.list,
            state_name(request.state),
            dict(request.labels),
            request.page_size,
            request.page_token,
        )
        return self.list_cls(jobs=[self.to_job(r) for r in records], next_page_token=token)

    async def cancel(self, request: common_pb2.CancelJobRequest, context: Any) -> Message:
        return self.to_job(await self.jobs.cancel(require_id(request.id)))

    async def watch(self, request: common_pb2.WatchJobRequest, context: Any) -> AsyncIterator[Message]:
        if request.after_sequence < 0:
            raise InvalidSpec("after_sequence", "must not be negative")
        async for event in self.jobs.watch(require_id(request.id), request.after_sequence):
            yield event_proto(event)
