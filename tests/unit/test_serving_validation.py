"""A deployment spec's problems through the real serving servicer, in process (local backend)."""

from __future__ import annotations

import grpc
import pytest

from slmops.api.v1 import serving_pb2, serving_pb2_grpc
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.serving.backends.local import LocalBackend
from slmops.serving.deployments import Deployments
from slmops.serving.service import registration
from tests.unit._problem_paths import problem_paths


@pytest.fixture
async def stub(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    deployments = Deployments(
        JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=LocalBackend(tmp_path / "logs")
    )
    running = await start_server("serving-test", [registration(deployments)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield serving_pb2_grpc.ServingServiceStub(channel)
    await channel.close()
    await running.stop(0)
    await deployments.close()


@pytest.mark.parametrize("validate_only", [False, True])
async def test_every_problem_comes_back_at_once_named_by_its_full_path(tmp_path, stub, validate_only):
    spec = serving_pb2.DeploymentSpec(
        name="Student_1",  # top-level: not a DNS-1123 label
        model_uri=str(tmp_path / "model"),
        canary_traffic_percent=30,  # cross-field: a canary needs a deployment to run beside
        adapters=[serving_pb2.AdapterRef(name="-sums", uri=str(tmp_path / "adapter"))],  # nested
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateDeployment(
            serving_pb2.CreateDeploymentRequest(spec=spec, validate_only=validate_only)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert sorted(problem_paths(details)) == [
        "spec.adapters[0].name",
        "spec.canary_traffic_percent",
        "spec.name",
    ], details
    assert "DNS-1123" in details and "create the deployment first" in details
    assert not (await stub.ListDeployments(serving_pb2.ListDeploymentsRequest())).deployments
