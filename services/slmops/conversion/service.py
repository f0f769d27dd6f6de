"""gRPC servicer of the conversion stage: protobuf in, validated config to the job core, protobuf out."""

from __future__ import annotations

from slmops.api.v1 import conversion_pb2, conversion_pb2_grpc
from slmops.conversion.spec import from_proto
from slmops.core.job_servicer import JobServicer
from slmops.core.server import Registration
from slmops.core.stage_jobs import StageJobs

SERVICE_NAME = conversion_pb2.DESCRIPTOR.services_by_name["ConversionService"].full_name


class ConversionServicer(JobServicer, conversion_pb2_grpc.ConversionServiceServicer):
    job_cls = conversion_pb2.ConversionJob
    list_cls = conversion_pb2.ListConversionJobsResponse
    spec_cls = conversion_pb2.ConversionSpec
    validate = staticmethod(from_proto)

    CreateConversionJob = JobServicer.create
    GetConversionJob = JobServicer.get
    ListConversionJobs = JobServicer.list
    CancelConversionJob = JobServicer.cancel
    WatchConversionJob = JobServicer.watch


def registration(jobs: StageJobs) -> Registration:
    return Registration(conversion_pb2_grpc.add_ConversionServiceServicer_to_server, ConversionServicer(jobs), SERVICE_NAME)
