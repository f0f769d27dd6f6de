"""A deployment's predictor limits (DeploymentSpec.limits): checked, kept with the deployment, and run by
every revision's predictors, on the local backend (argv, router) and the kserve one (container args)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

import grpc
import httpx
import pytest

from slmops.api.v1 import serving_pb2, serving_pb2_grpc
from slmops.core import predictor_key
from slmops.core.artifacts import to_uri
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.serving.backends import PredictorLimits, Revision
from slmops.serving.backends.kserve import KServeBackend
from slmops.serving.backends.local import LocalBackend
from slmops.serving.deployments import Deployments
from slmops.serving.service import deployment_proto, registration
from tests.unit._kserve_emulator import NS, Emulator, api_client, stored_object, student_revision
from tests.unit._problem_paths import problem_paths
from tests.unit._split_backend import SplitBackend

LIMITS = {"threads": 2, "max_tokens": 8, "max_body_bytes": 4096, "request_timeout_s": 2.5}
FLAGS = ["--threads", "2", "--max-tokens", "8", "--max-body-bytes", "4096", "--request-timeout", "2.5"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


@pytest.mark.parametrize("validate_only", [False, True])
async def test_limits_out_of_range_are_refused_at_once_by_their_full_path(tmp_path, env, validate_only):
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=SplitBackend())
    running = await start_server("serving-test", [registration(deployments)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            limits = serving_pb2.PredictorLimits(threads=-1, max_tokens=-5, max_body_bytes=100,
                                                 request_timeout_s=601, max_queue=3)  # fmt: skip
            spec = serving_pb2.DeploymentSpec(name="student", model_uri=str(env), limits=limits)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateDeployment(
                    serving_pb2.CreateDeploymentRequest(spec=spec, validate_only=validate_only)
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details()
            assert sorted(problem_paths(details)) == [
                "spec.limits.max_body_bytes", "spec.limits.max_tokens", "spec.limits.request_timeout_s",
                "spec.limits.threads",
            ], details  # fmt: skip
            assert "at least 1024 bytes" in details
            assert not (await stub.ListDeployments(serving_pb2.ListDeploymentsRequest())).deployments
    finally:
        await running.stop(0)
        await deployments.close()


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _settled(deployments: Deployments, name: str) -> bool:
    record = deployments.get(name)
    return record.state == "READY" and record.result.get("settled") == record.config.get("generation")


async def test_every_revision_runs_with_the_deployments_limits(tmp_path, env):
    backend = SplitBackend()
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=backend, poll_s=0.05)
    deployments.resume()
    try:
        await deployments.create({"name": "student", "model_uri": str(env), "limits": LIMITS})
        await _until(lambda: _settled(deployments, "student"))
        await deployments.update("student", str(env), [], 20)  # a canary: no limits of its own
        await _until(lambda: _settled(deployments, "student"))
        await deployments.promote("student")
        await _until(lambda: _settled(deployments, "student"))
        await deployments.rollback("student")  # revision 1 again
        await _until(lambda: _settled(deployments, "student"))
        record = deployments.get("student")
        proto = deployment_proto(record, deployments.revisions("student"))
    finally:
        await deployments.close()
    assert [r.number for r in backend.handed] == [1, 2, 1]
    assert {r.limits for r in backend.handed} == {PredictorLimits(**LIMITS)}
    assert record.config["limits"] == LIMITS
    assert proto.spec.limits.max_tokens == 8 and proto.spec.limits.max_body_bytes == 4096


async def test_a_deployment_without_limits_keeps_the_predictors_defaults(tmp_path, env):
    backend = SplitBackend()
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=backend, poll_s=0.05)
    deployments.resume()
    try:
        await deployments.create({"name": "student", "model_uri": str(env)})
        await _until(lambda: _settled(deployments, "student"))
    finally:
        await deployments.close()
    assert backend.handed[0].limits == PredictorLimits() and PredictorLimits().flags() == []


def test_the_local_backend_starts_predictors_with_the_limits_and_its_router_takes_the_body_limit(
    tmp_path, env, monkeypatch
):
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(predictor_key.ensure(tmp_path / "data")))
    argv_file = tmp_path / "argv"
    # Stands in for the predictor: writes the arguments it got, then waits to be stopped.
    program = [sys.executable, "-c", "import pathlib, sys, time; "
               f"pathlib.Path({str(argv_file)!r}).write_text(chr(10).join(sys.argv[1:])); time.sleep(60)"]  # fmt: skip
    backend = LocalBackend(tmp_path / "logs", program=program)
    revision = Revision(1, to_uri(env), to_uri(env), limits=PredictorLimits(**LIMITS))
    try:
        url = backend.apply("student", revision)["url"]
        deadline = time.monotonic() + 20
        while not argv_file.exists() or not argv_file.read_text():
            assert time.monotonic() < deadline, "the predictor was not started"
            time.sleep(0.05)
        argv = argv_file.read_text().splitlines()
        flags = dict(zip(argv[::2], argv[1::2], strict=False))
        assert {k: flags[k] for k in FLAGS[::2]} == dict(zip(FLAGS[::2], FLAGS[1::2], strict=True))
        assert argv.count("--max-body-bytes") == 1  # the deployment's limit, not the backend's beside it
        key = {"Authorization": f"Bearer {predictor_key.read()}"}
        body = b'{"prompt": "' + b"x" * 5000 + b'"}'
        response = httpx.post(f"{url}/openai/v1/completions", content=body, headers=key, trust_env=False)
        assert response.status_code == 413 and "4096" in response.text
    finally:
        backend.close()


def test_a_deployment_without_limits_gets_the_routers_default_body_limit(tmp_path, env, monkeypatch):
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(predictor_key.ensure(tmp_path / "data")))
    backend = LocalBackend(tmp_path / "logs", program=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        url = backend.apply("student", Revision(1, to_uri(env), to_uri(env)))["url"]
        body = b'{"prompt": "' + b"x" * 5000 + b'"}'
        response = httpx.post(f"{url}/openai/v1/completions", content=body, trust_env=False,
                              headers={"Authorization": f"Bearer {predictor_key.read()}"})  # fmt: skip
        assert response.status_code == 503  # past the body limit; no predictor is ready to answer
    finally:
        backend.close()


def test_the_inference_service_carries_the_limits_as_predictor_args_through_a_rollout():
    with Emulator() as emulator:
        api = api_client(emulator.url)
        backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", deployment_mode="Knative",
                                owner="slmops-test")  # fmt: skip
        limits = PredictorLimits(**LIMITS)
        built = backend.build("support-student", dataclasses.replace(student_revision(1), limits=limits))
        assert built["spec"]["predictor"]["model"]["args"] == FLAGS
        assert (
            "args" not in backend.build("support-student", student_revision(1))["spec"]["predictor"]["model"]
        )

        backend.apply("support-student", dataclasses.replace(student_revision(1), limits=limits))
        backend.apply("support-student", dataclasses.replace(student_revision(2, percent=10), limits=limits))
        assert stored_object(api, "support-student")["spec"]["predictor"]["model"]["args"] == FLAGS
        backend.promote("support-student")
        backend.rollback("support-student")  # after a promotion: revision 1 rebuilt from the object alone
        model = stored_object(api, "support-student")["spec"]["predictor"]["model"]
        assert model["storageUri"].endswith("/rev-0001") and model["args"] == FLAGS


def test_limits_round_trip_through_the_predictors_flags():
    limits = PredictorLimits.of({"max_queue": "3", "request_timeout_s": 0.5, "max_body_bytes": 2048})
    assert limits.flags() == ["--max-queue", "3", "--max-body-bytes", "2048", "--request-timeout", "0.5"]
    assert PredictorLimits.from_flags(["--model-dir=/m", *limits.flags()]) == limits
    assert PredictorLimits.from_flags(["--max-tokens=9", "--max-tokens", "12"]).max_tokens == 12
