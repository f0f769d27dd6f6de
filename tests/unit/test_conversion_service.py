"""The conversion service in process: a real gRPC server and job core, a fake Ray."""

from __future__ import annotations

import json

import grpc
import pytest

from slmops.api.v1 import common_pb2, conversion_pb2, conversion_pb2_grpc
from slmops.conversion.service import registration
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from tests.unit._fakes import FakeRay
from tests.unit._problem_paths import problem_paths


@pytest.fixture
async def service(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    ray = FakeRay()
    jobs = StageJobs("conversion", JobStore(f"sqlite:///{tmp_path}/jobs.db"), ray, poll_s=0.05)
    running = await start_server("conversion-test", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield conversion_pb2_grpc.ConversionServiceStub(channel), ray
    await channel.close()
    await running.stop(0)
    await jobs.close()


async def test_every_problem_comes_back_at_once_named_by_its_full_path(tmp_path, service):
    stub, ray = service
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    spec = conversion_pb2.ConversionSpec(
        model_uri=str(checkpoint),
        precision=conversion_pb2.FP16,  # cross-field: the CPU has no FP16 build
        verification=conversion_pb2.VerificationSpec(max_kl=-1),  # a nested range
        output_uri=str(checkpoint),  # top-level: the output would overwrite the model
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateConversionJob(conversion_pb2.CreateConversionJobRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert sorted(problem_paths(details)) == [
        "spec.output_uri",
        "spec.precision",
        "spec.verification.max_kl",
    ], details
    assert "FP16 is not available for CPU" in details
    assert not (await stub.ListConversionJobs(common_pb2.ListJobsRequest())).jobs
    assert ray.submitted == []
