"""gRPC servicer of the serving stage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format

from slmops.api.v1 import common_pb2, serving_pb2, serving_pb2_grpc
from slmops.core.errors import InvalidSpec, validate_pending
from slmops.core.jobs.servicer import message_to_dict, timestamp
from slmops.core.jobs.store import Event, JobRecord
from slmops.core.server import Registration
from slmops.serving.deployments import Deployments
from slmops.serving.validation import validate

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name
# Deployment states as job states, for the shared ProgressEvent message.
_EVENT_STATE = {"DEPLOYING": "RUNNING", "READY": "SUCCEEDED", "FAILED": "FAILED", "DELETED": "CANCELLED"}


def _name(value: str) -> str:
    if not value.strip():
        raise InvalidSpec("name", "must name a deployment (got an empty string)")
    return value.strip()


def revision_proto(name: str, rev: JobRecord) -> serving_pb2.Revision:
    number = int(rev.config["number"])
    proto = serving_pb2.Revision(
        name=f"{name}-{number}", number=number, model_uri=rev.config.get("model_uri", ""),
        traffic_percent=int(rev.result.get("traffic_percent", 0)),
        state=serving_pb2.DeploymentState.Value(f"DEPLOYMENT_{rev.state}"), url=rev.result.get("url", ""),
        reason=rev.reason, create_time=timestamp(rev.created), log=rev.result.get("runtime", {}).get("log", ""),
        adapters=[serving_pb2.AdapterRef(name=a, uri=u) for a, u in rev.config.get("adapters", [])],
        grpc_address=rev.result.get("grpc_address", ""),
    )  # fmt: skip
    if rev.output_uri:
        proto.artifact.CopyFrom(common_pb2.ArtifactRef(uri=rev.output_uri, kind="deployment"))
    return proto


def deployment_proto(record: JobRecord, revisions: list[JobRecord]) -> serving_pb2.Deployment:
    spec = json_format.ParseDict(record.spec, serving_pb2.DeploymentSpec(), ignore_unknown_fields=True)
    state = serving_pb2.DeploymentState.Value(f"DEPLOYMENT_{record.state}")
    url = record.result.get("url", "") if record.state == "READY" else ""
    grpc_address = record.result.get("grpc_address", "") if record.state == "READY" else ""
    proto = serving_pb2.Deployment(
        name=record.id, spec=spec, state=state, reason=record.reason, url=url, trace_id=record.trace_id,
        create_time=timestamp(record.created), update_time=timestamp(record.updated),
        serving_revision=int(record.config.get("serving", 0)), latest_revision=int(record.config.get("latest", 0)),
        revisions=[revision_proto(record.id, r) for r in reversed(revisions)],  # newest first
        grpc_address=grpc_address,
    )  # fmt: skip
    if record.output_uri:
        proto.artifact.CopyFrom(common_pb2.ArtifactRef(uri=record.output_uri, kind="deployment"))
    return proto


def _event_proto(event: Event) -> common_pb2.ProgressEvent:
    return common_pb2.ProgressEvent(
        job_id=event.job_id,
        sequence=event.sequence,
        fraction=event.fraction,
        message=event.message,
        state=common_pb2.JobState.Value(_EVENT_STATE.get(event.state, "RUNNING")),
        time=timestamp(event.time),
    )


class ServingServicer(serving_pb2_grpc.ServingServiceServicer):
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    async def _proto(self, record: JobRecord) -> serving_pb2.Deployment:
        return deployment_proto(record, await asyncio.to_thread(self.deployments.revisions, record.id))

    async def CreateDeployment(self, request: serving_pb2.CreateDeploymentRequest, context: Any):
        if not request.HasField("spec"):
            raise InvalidSpec("spec", "is required")
        spec = message_to_dict(request.spec)
        spec.setdefault("name", "")
        if request.validate_only:
            await asyncio.to_thread(validate_pending, validate, spec, list(request.pending_fields))
            return serving_pb2.Deployment(name=request.spec.name, spec=request.spec)
        return await self._proto(await self.deployments.create(spec))

    async def GetDeployment(self, request: serving_pb2.GetDeploymentRequest, context: Any):
        return await self._proto(await asyncio.to_thread(self.deployments.get, _name(request.name)))

    async def ListDeployments(self, request: serving_pb2.ListDeploymentsRequest, context: Any):
        records, token = await asyncio.to_thread(
            self.deployments.list, dict(request.labels), request.page_size, request.page_token
        )
        return serving_pb2.ListDeploymentsResponse(
            deployments=[await self._proto(r) for r in records], next_page_token=token
        )

    async def DeleteDeployment(self, request: serving_pb2.DeleteDeploymentRequest, context: Any):
        return await self._proto(await self.deployments.delete(_name(request.name)))

    async def WatchDeployment(
        self, request: serving_pb2.WatchDeploymentRequest, context: Any
    ) -> AsyncIterator[common_pb2.ProgressEvent]:
        if request.after_sequence < 0:
            raise InvalidSpec("after_sequence", "must not be negative")
        async for event in self.deployments.watch(_name(request.name), request.after_sequence):
            yield _event_proto(event)

    async def UpdateDeployment(self, request: serving_pb2.UpdateDeploymentRequest, context: Any):
        adapters = [message_to_dict(a) for a in request.adapters]
        record = await self.deployments.update(_name(request.name), request.model_uri, adapters,
                                               request.canary_traffic_percent)  # fmt: skip
        return await self._proto(record)

    async def PromoteDeployment(self, request: serving_pb2.PromoteDeploymentRequest, context: Any):
        return await self._proto(
            await self.deployments.promote(_name(request.name), request.evaluation_report_uri, request.force)
        )

    async def RollbackDeployment(self, request: serving_pb2.RollbackDeploymentRequest, context: Any):
        return await self._proto(await self.deployments.rollback(_name(request.name)))


def registration(deployments: Deployments) -> Registration:
    return Registration(
        serving_pb2_grpc.add_ServingServiceServicer_to_server, ServingServicer(deployments), SERVICE_NAME
    )
