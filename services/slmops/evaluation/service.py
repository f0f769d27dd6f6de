"""gRPC servicer of the evaluation stage: protobuf in, validated config to the job core, protobuf out."""

from __future__ import annotations

from slmops.api.v1 import evaluation_pb2, evaluation_pb2_grpc
from slmops.core.job_servicer import JobServicer
from slmops.core.server import Registration
from slmops.core.stage_jobs import StageJobs
from slmops.evaluation.spec import from_proto

SERVICE_NAME = evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name


class EvaluationServicer(JobServicer, evaluation_pb2_grpc.EvaluationServiceServicer):
    job_cls = evaluation_pb2.EvaluationJob
    list_cls = evaluation_pb2.ListEvaluationJobsResponse
    spec_cls = evaluation_pb2.EvaluationSpec
    validate = staticmethod(from_proto)

    CreateEvaluationJob = JobServicer.create
    GetEvaluationJob = JobServicer.get
    ListEvaluationJobs = JobServicer.list
    CancelEvaluationJob = JobServicer.cancel
    WatchEvaluationJob = JobServicer.watch


def registration(jobs: StageJobs) -> Registration:
    return Registration(evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server, EvaluationServicer(jobs), SERVICE_NAME)
