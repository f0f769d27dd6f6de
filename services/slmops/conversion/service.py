"""gRPC servicer of the conversion stage: protobuf in, validated config to the job core, protobuf out."""

from __future__ import annotations

import logging
from typing import Any

from slmops.api.v1 import conversion_pb2, conversion_pb2_grpc
from slmops.conversion.config import ConversionConfig
from slmops.conversion.spec import from_proto
from slmops.core.errors import Conflict, Unavailable
from slmops.core.jobs.servicer import JobServicer
from slmops.core.jobs.stage import StageJobs
from slmops.core.ray_capacity import cluster_capacity
from slmops.core.server import Registration

SERVICE_NAME = conversion_pb2.DESCRIPTOR.services_by_name["ConversionService"].full_name
log = logging.getLogger(__name__)


def check_gpu(config: ConversionConfig, ray: Any) -> None:
    """A CUDA conversion the Ray cluster can never give a GPU to is refused (FAILED_PRECONDITION).

    The cluster's GPUs are its live nodes' or, when the worker groups are known,
    what its head and every group at its most replicas have (core/ray_capacity.py);
    the conversion task's GPUs must then also fit on one node or pod.
    """
    if config.execution_provider != "cuda":
        return
    try:
        cap = cluster_capacity(ray)
    except Unavailable as exc:
        log.warning("not checking the cluster for a GPU: %s", exc)
        return
    needed = max(config.resources.num_gpus, 1.0)
    gpus = cap.total.get("GPU", 0.0)
    where = "can have at most" if cap.shapes else "has"
    if gpus < needed:
        raise Conflict(
            f"spec.execution_provider: CUDA needs a GPU and the Ray cluster {where} {gpus:g}; "
            "convert for CPU, or add a GPU node"
        )
    if not cap.fits_one({"GPU": needed}):
        raise Conflict(
            f"spec.resources.num_gpus: the conversion needs {needed:g} GPUs on one node and the largest Ray node "
            f"or worker group pod has {cap.largest('GPU'):g}"
        )


class ConversionServicer(JobServicer, conversion_pb2_grpc.ConversionServiceServicer):
    job_cls = conversion_pb2.ConversionJob
    list_cls = conversion_pb2.ListConversionJobsResponse
    spec_cls = conversion_pb2.ConversionSpec
    validate = staticmethod(from_proto)
    precheck = staticmethod(check_gpu)

    CreateConversionJob = JobServicer.create
    GetConversionJob = JobServicer.get
    ListConversionJobs = JobServicer.list
    CancelConversionJob = JobServicer.cancel
    WatchConversionJob = JobServicer.watch


def registration(jobs: StageJobs) -> Registration:
    return Registration(
        conversion_pb2_grpc.add_ConversionServiceServicer_to_server, ConversionServicer(jobs), SERVICE_NAME
    )
