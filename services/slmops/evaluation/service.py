"""gRPC servicer of the evaluation stage.

Targets named by deployment are resolved through the serving service when the
job is created, so an unknown or unready deployment is a clear INVALID_ARGUMENT
or FAILED_PRECONDITION at once, not a failed job later.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from slmops.api.v1 import evaluation_pb2, evaluation_pb2_grpc, serving_pb2
from slmops.core import clients as client
from slmops.core.errors import Conflict, InvalidSpec, Unavailable, validate_pending
from slmops.core.jobs.servicer import JobServicer, message_to_dict
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobRecord
from slmops.core.server import Registration
from slmops.evaluation.config import EvaluationConfig
from slmops.evaluation.spec import from_proto

SERVICE_NAME = evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name


def resolve_deployments(config: EvaluationConfig) -> EvaluationConfig:
    """Fill base_url (and model, model_uri when empty) of targets named by deployment."""
    for index, target in enumerate(config.targets):
        if target.base_url or not target.deployment:
            continue
        field = f"spec.targets[{index}].deployment"
        try:
            deployment = client.call(
                client.stub("serving").GetDeployment, serving_pb2.GetDeploymentRequest(name=target.deployment)
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidSpec(field, f"no deployment named {target.deployment!r}") from None
            raise Unavailable(f"serving service: {exc.code().name}: {exc.details()}") from None
        if deployment.state != serving_pb2.DEPLOYMENT_READY:
            state = serving_pb2.DeploymentState.Name(deployment.state)
            raise Conflict(f"{field}: deployment {target.deployment!r} is {state}, not READY")
        target.base_url = f"{deployment.url}/openai/v1"
        target.model = target.model or deployment.name
        serving = [r.model_uri for r in deployment.revisions if r.number == deployment.serving_revision]
        target.model_uri = target.model_uri or (serving[0] if serving else deployment.spec.model_uri)
    return config


class EvaluationServicer(JobServicer, evaluation_pb2_grpc.EvaluationServiceServicer):
    job_cls = evaluation_pb2.EvaluationJob
    list_cls = evaluation_pb2.ListEvaluationJobsResponse
    spec_cls = evaluation_pb2.EvaluationSpec
    validate = staticmethod(from_proto)

    async def create(self, request: Any, context: Any) -> Any:
        if not request.HasField("spec"):
            raise InvalidSpec("spec", "is required")
        if request.validate_only:  # deployments a pipeline has yet to create are not resolved
            await asyncio.to_thread(validate_pending, from_proto, request.spec, list(request.pending_fields))
            return self.job_cls(spec=request.spec)
        config = await asyncio.to_thread(resolve_deployments, from_proto(request.spec))
        record = await self.jobs.create(
            config.model_dump(mode="json"),
            message_to_dict(request.spec),
            request.spec.output_uri,
            dict(request.spec.labels),
        )
        return self.to_job(record)

    def to_job(self, record: JobRecord) -> Any:
        job = super().to_job(record)
        for result in record.result.get("results", []):
            job.results.append(
                evaluation_pb2.TargetResult(
                    **{
                        k: v
                        for k, v in result.items()
                        if k in evaluation_pb2.TargetResult.DESCRIPTOR.fields_by_name
                    }
                )
            )
        verdict = record.result.get("verdict")
        if verdict:
            job.verdict.CopyFrom(
                evaluation_pb2.GateVerdict(
                    evaluated=bool(verdict.get("evaluated")),
                    passed=bool(verdict.get("passed")),
                    reasons=list(verdict.get("reasons", [])),
                )
            )
        return job

    CreateEvaluationJob = create
    GetEvaluationJob = JobServicer.get
    ListEvaluationJobs = JobServicer.list
    CancelEvaluationJob = JobServicer.cancel
    WatchEvaluationJob = JobServicer.watch


def registration(jobs: StageJobs) -> Registration:
    return Registration(
        evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server, EvaluationServicer(jobs), SERVICE_NAME
    )
