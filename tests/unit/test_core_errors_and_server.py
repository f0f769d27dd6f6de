"""The error interceptor, health and reflection, on a real in-process grpc.aio server."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.api.v1 import common_pb2, training_pb2, training_pb2_grpc
from slmops.core.errors import Conflict, InvalidSpec, NotFound, Unavailable
from slmops.core.server import Registration, start_server

RAISES = {
    "bad": InvalidSpec("spec.base.model", "is required"),
    "missing": NotFound("job", "x"),
    "done": Conflict("already finished"),
    "down": Unavailable("ray is down"),
    "bug": ZeroDivisionError("secret internals"),
}


class Servicer(training_pb2_grpc.TrainingServiceServicer):
    async def GetTrainingJob(self, request, context):
        raise RAISES[request.id]

    async def WatchTrainingJob(self, request, context):
        yield common_pb2.ProgressEvent(job_id=request.id, sequence=1)
        raise RAISES[request.id]


@pytest.fixture
async def server():
    name = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
    running = await start_server(
        "test", [Registration(training_pb2_grpc.add_TrainingServiceServicer_to_server, Servicer(), name)]
    )
    yield running
    await running.stop(0)


@pytest.mark.parametrize(
    ("key", "code", "text"),
    [
        ("bad", grpc.StatusCode.INVALID_ARGUMENT, "spec.base.model: is required"),
        ("missing", grpc.StatusCode.NOT_FOUND, "not found"),
        ("done", grpc.StatusCode.FAILED_PRECONDITION, "already finished"),
        ("down", grpc.StatusCode.UNAVAILABLE, "ray is down"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error in GetTrainingJob"),
    ],
)
async def test_domain_errors_map_to_status_codes(server, key, code, text):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetTrainingJob(common_pb2.GetJobRequest(id=key))
        assert info.value.code() == code
        assert text in info.value.details()
        assert "secret internals" not in info.value.details()
        assert "Traceback" not in info.value.details()
        stream = stub.WatchTrainingJob(common_pb2.WatchJobRequest(id=key))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() == code


async def test_health_reports_each_service_and_not_serving_on_stop(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="slmops.v1.TrainingService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="slmops.v1.Nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
