"""gRPC servicer of the synthesis stage: protobuf in, validated config to the job core, protobuf out."""

from __future__ import annotations

from slmops.api.v1 import synthesis_pb2, synthesis_pb2_grpc
from slmops.core.jobs.servicer import JobServicer
from slmops.core.jobs.stage import StageJobs
from slmops.core.server import Registration
from slmops.synthesis.spec import from_proto

SERVICE_NAME = synthesis_pb2.DESCRIPTOR.services_by_name["SynthesisService"].full_name


class SynthesisServicer(JobServicer, synthesis_pb2_grpc.SynthesisServiceServicer):
    job_cls = synthesis_pb2.SynthesisJob
    list_cls = synthesis_pb2.ListSynthesisJobsResponse
    spec_cls = synthesis_pb2.SynthesisSpec
    validate = staticmethod(from_proto)

    CreateSynthesisJob = JobServicer.create
    GetSynthesisJob = JobServicer.get
    ListSynthesisJobs = JobServicer.list
    CancelSynthesisJob = JobServicer.cancel
    WatchSynthesisJob = JobServicer.watch


def registration(jobs: StageJobs) -> Registration:
    return Registration(
        synthesis_pb2_grpc.add_SynthesisServiceServicer_to_server, SynthesisServicer(jobs), SERVICE_NAME
    )
