"""gRPC servicer of the training stage: protobuf in, validated config to the job core, protobuf out."""

from __future__ import annotations

from slmops.api.v1 import training_pb2, training_pb2_grpc
from slmops.core.jobs.servicer import JobServicer
from slmops.core.jobs.stage import StageJobs
from slmops.core.server import Registration
from slmops.training.capacity import check_capacity
from slmops.training.spec import from_proto

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


class TrainingServicer(JobServicer, training_pb2_grpc.TrainingServiceServicer):
    job_cls = training_pb2.TrainingJob
    list_cls = training_pb2.ListTrainingJobsResponse
    spec_cls = training_pb2.TrainingSpec
    validate = staticmethod(from_proto)
    precheck = staticmethod(check_capacity)

    CreateTrainingJob = JobServicer.create
    GetTrainingJob = JobServicer.get
    ListTrainingJobs = JobServicer.list
    CancelTrainingJob = JobServicer.cancel
    WatchTrainingJob = JobServicer.watch


def registration(jobs: StageJobs) -> Registration:
    return Registration(
        training_pb2_grpc.add_TrainingServiceServicer_to_server, TrainingServicer(jobs), SERVICE_NAME
    )
