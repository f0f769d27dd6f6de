"""Prometheus metrics of a real in-process service, scraped over HTTP.

The evaluation service runs on a real gRPC server and job core (SQLite), with
a fake Ray; /metrics is read with httpx and parsed with prometheus_client's
own text parser.
"""

from __future__ import annotations

import asyncio
import json
import socket

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmops.api.v1 import common_pb2, evaluation_pb2, evaluation_pb2_grpc
from slmops.core import artifacts
from slmops.core.jobs.lifecycle import Lifecycle
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.core.metrics import port_setting
from slmops.core.server import start_server
from slmops.evaluation.service import registration
from tests.unit._fakes import FakeRay

METHOD = "slmops.v1.EvaluationService/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
async def service(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    jobs = StageJobs("evaluation", JobStore(f"sqlite:///{tmp_path}/jobs.db"), FakeRay(), poll_s=0.05)
    running = await start_server("evaluation", [registration(jobs)], metrics_port=_free_port())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield evaluation_pb2_grpc.EvaluationServiceStub(channel), running, jobs, tmp_path
    await channel.close()
    await running.stop(0)
    await jobs.close()


async def _scrape(port: int) -> dict:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert reply.status_code == 200
    return _samples(reply.text)


async def test_rpcs_are_counted_by_method_and_code_and_jobs_by_state(service):
    stub, running, jobs, root = service
    dataset = root / "qa.jsonl"
    dataset.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    spec = evaluation_pb2.EvaluationSpec(
        targets=[evaluation_pb2.EvalTarget(name="student", base_url="http://127.0.0.1:9/v1", model="m")],
        dataset_uri=artifacts.to_uri(dataset),
    )
    job = await stub.CreateEvaluationJob(evaluation_pb2.CreateEvaluationJobRequest(spec=spec))
    assert job.id.startswith("evalu-")
    await stub.GetEvaluationJob(common_pb2.GetJobRequest(id=job.id))
    await stub.GetEvaluationJob(common_pb2.GetJobRequest(id=job.id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateEvaluationJob(
            evaluation_pb2.CreateEvaluationJobRequest(spec=evaluation_pb2.EvaluationSpec())
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetEvaluationJob(common_pb2.GetJobRequest(id="evalu-nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    samples = await _scrape(running.metrics_port)

    def requests(method: str, code: str) -> float:
        labels = (("code", code), ("method", METHOD + method), ("service", "evaluation"))
        return samples.get(("slmops_rpc_requests_total", labels), 0.0)

    assert requests("GetEvaluationJob", "OK") == 2
    assert requests("GetEvaluationJob", "NOT_FOUND") == 1
    assert requests("CreateEvaluationJob", "OK") == 1
    assert requests("CreateEvaluationJob", "INVALID_ARGUMENT") == 1
    count = (
        "slmops_rpc_duration_seconds_count",
        (("method", METHOD + "GetEvaluationJob"), ("service", "evaluation")),
    )
    assert samples[count] == 3
    assert samples[("slmops_jobs", (("service", "evaluation"), ("state", "PENDING")))] == 1
    assert samples[("slmops_jobs", (("service", "evaluation"), ("state", "FAILED")))] == 0
    assert samples[("slmops_lease_takeovers_total", (("service", "evaluation"),))] == 0

    await stub.CancelEvaluationJob(common_pb2.CancelJobRequest(id=job.id))
    samples = await _scrape(running.metrics_port)
    assert samples[("slmops_jobs", (("service", "evaluation"), ("state", "PENDING")))] == 0
    assert samples[("slmops_jobs", (("service", "evaluation"), ("state", "CANCELLED")))] == 1


async def test_a_streaming_rpc_is_counted_with_its_final_code(service):
    stub, running, _, _ = service
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.WatchEvaluationJob(common_pb2.WatchJobRequest(id="evalu-nope")):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    samples = await _scrape(running.metrics_port)
    labels = (("code", "NOT_FOUND"), ("method", METHOD + "WatchEvaluationJob"), ("service", "evaluation"))
    assert samples[("slmops_rpc_requests_total", labels)] == 1


async def test_the_endpoint_stops_with_the_server(service):
    _, running, _, _ = service
    port = running.metrics_port
    assert port and (await _scrape(port))
    await running.stop(0)
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


async def test_two_services_in_one_process_keep_their_numbers_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    servers, stores = [], []
    for name in ("a", "b"):
        jobs = StageJobs("evaluation", JobStore(f"sqlite:///{tmp_path}/{name}.db"), FakeRay())
        stores.append(jobs)
        servers.append(
            await start_server(f"evaluation-{name}", [registration(jobs)], metrics_port=_free_port())
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[0].port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await evaluation_pb2_grpc.EvaluationServiceStub(channel).GetEvaluationJob(
                    common_pb2.GetJobRequest(id="evalu-x")
                )
        first, second = [await _scrape(s.metrics_port) for s in servers]
        labels = (("code", "NOT_FOUND"), ("method", METHOD + "GetEvaluationJob"), ("service", "evaluation-a"))
        assert first[("slmops_rpc_requests_total", labels)] == 1
        assert not [key for key in second if key[0] == "slmops_rpc_requests_total"]
    finally:
        for running, jobs in zip(servers, stores, strict=True):
            await running.stop(0)
            await jobs.close()


def test_the_port_is_off_by_default_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.delenv("SLMOPS_METRICS_PORT", raising=False)
    assert port_setting() == 0
    monkeypatch.setenv("SLMOPS_METRICS_PORT", "9464")
    assert port_setting() == 9464
    monkeypatch.setenv("SLMOPS_METRICS_PORT", "metrics")
    with pytest.raises(ValueError, match="SLMOPS_METRICS_PORT"):
        port_setting()


async def test_no_endpoint_when_the_port_is_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_METRICS_PORT", "0")
    jobs = StageJobs("evaluation", JobStore(f"sqlite:///{tmp_path}/jobs.db"), FakeRay())
    running = await start_server("evaluation", [registration(jobs)])
    try:
        assert running.metrics_port == 0
    finally:
        await running.stop(0)
        await jobs.close()


class _Engine:
    """Work that never ends: enough for two replicas to hand a record over."""

    async def find(self, record):
        return "work-1"

    async def attached(self, record):
        return True

    async def submit(self, record):
        return "work-1"

    async def poll(self, record):
        from slmops.core.jobs.lifecycle import Update

        return Update(state="RUNNING")

    async def stop(self, record):
        return True


async def test_a_lease_takeover_is_counted(tmp_path):
    from slmops.core.metrics import ServiceMetrics

    store = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    dead = Lifecycle("evaluation", store, _Engine(), poll_s=0.05, lease_s=0.6, owner="replica-dead")
    alive = Lifecycle("evaluation", store, _Engine(), poll_s=0.05, lease_s=0.6, owner="replica-alive")
    await dead.record(JobRecord(id="evalu-1", kind="evaluation"))
    for task in list(dead._tasks.values()):  # the replica dies: it stops, its lease is not released
        task.cancel()
    assert store.get("evalu-1").owner == "replica-dead"
    metrics = ServiceMetrics("evaluation", [alive])
    alive.resume()
    try:
        for _ in range(100):
            if alive.takeovers and store.get("evalu-1").state == "RUNNING":
                break
            await asyncio.sleep(0.05)
        assert alive.takeovers == 1
        assert store.get("evalu-1").owner == "replica-alive"
        value = metrics.registry.get_sample_value("slmops_lease_takeovers_total", {"service": "evaluation"})
        assert value == 1
        running = metrics.registry.get_sample_value(
            "slmops_jobs", {"service": "evaluation", "state": "RUNNING"}
        )
        assert running == 1
    finally:
        await alive.close()


async def test_a_call_without_the_token_is_counted_unauthenticated(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("s3cret")
    monkeypatch.setenv("SLMOPS_AUTH_TOKEN_FILE", str(token))
    jobs = StageJobs("evaluation", JobStore(f"sqlite:///{tmp_path}/jobs.db"), FakeRay())
    running = await start_server("evaluation", [registration(jobs)], metrics_port=_free_port())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await evaluation_pb2_grpc.EvaluationServiceStub(channel).ListEvaluationJobs(
                    common_pb2.ListJobsRequest()
                )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        samples = await _scrape(running.metrics_port)
        labels = (
            ("code", "UNAUTHENTICATED"),
            ("method", METHOD + "ListEvaluationJobs"),
            ("service", "evaluation"),
        )
        assert samples[("slmops_rpc_requests_total", labels)] == 1
        assert "s3cret" not in str(samples)
    finally:
        await running.stop(0)
        await jobs.close()
