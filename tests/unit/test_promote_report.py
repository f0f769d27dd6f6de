"""A promotion that names no report is held to the newest evaluation report whose gate judged the canary.

The reports are real report artifacts under the artifact root's reports/ folder (a manifest naming
the targets and the gate, and a report.json with the verdict), as the evaluation job writes them;
the deployments run on the split-backend stand-in (tests/unit/_split_backend.py), which serves each
revision at its own URL.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from slmops.api.v1 import serving_pb2, serving_pb2_grpc
from slmops.core.errors import Conflict, InvalidSpec
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.serving.deployments import Deployments
from slmops.serving.service import registration
from tests.unit._reports import report
from tests.unit._split_backend import STABLE_URL, SplitBackend, revision_url

NAME = "student"


@pytest.fixture
async def deployments(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    found = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=SplitBackend(), poll_s=0.05)
    found.resume()
    await found.create({"name": NAME, "model_uri": str(model)})
    await _until(lambda: _settled(found))
    yield found, str(model)
    await found.close()


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _settled(deployments: Deployments) -> bool:
    record = deployments.get(NAME)
    return record.state == "READY" and record.result.get("settled") == record.config.get("generation")


async def _canary(deployments: Deployments, model: str, number: int = 2) -> None:
    """A canary with 20% of the traffic once it is ready."""
    await deployments.update(NAME, model, [], 20)
    await _until(
        lambda: _settled(deployments) and deployments.get(NAME).result["traffic"].get(str(number)) == 20
    )


def _events(deployments: Deployments) -> list[str]:
    return [e.message for e in deployments.store.events(NAME)]


async def test_a_failed_gate_on_the_canary_refuses_the_promotion_and_force_overrides_it(deployments):
    deployments, model = deployments
    await _canary(deployments, model)
    failed = report(revision_url(2), passed=False)
    with pytest.raises(Conflict) as refused:
        await deployments.promote(NAME)
    assert failed in str(refused.value) and "retention 0.500 < min 0.900" in str(refused.value)
    assert "--force" in str(refused.value)
    assert deployments.get(NAME).config["serving"] == 1  # nothing moved

    await deployments.promote(NAME, force=True)
    await _until(lambda: _settled(deployments))
    assert deployments.get(NAME).config["serving"] == 2
    forced = [m for m in _events(deployments) if "forced past" in m]
    assert len(forced) == 1 and failed in forced[0] and "gate failed" in forced[0], _events(deployments)


async def test_the_newest_report_of_the_canary_decides(deployments):
    deployments, model = deployments
    await _canary(deployments, model)
    report(revision_url(2), passed=False)
    time.sleep(0.01)
    passed = report(revision_url(2), passed=True)  # evaluated again, after a fix: it passes
    report(STABLE_URL, passed=False)  # the split URL measures the mix, not the canary
    report(revision_url(1), passed=False)  # the serving revision as the candidate
    report(revision_url(2), passed=False, model="another-model")
    report(revision_url(2), passed=None, gate=False)  # no gate: judges nothing
    await deployments.promote(NAME)
    await _until(lambda: _settled(deployments))
    assert deployments.get(NAME).config["serving"] == 2
    assert any(passed in m and "gate passed" in m for m in _events(deployments)), _events(deployments)


async def test_a_gate_asked_for_without_a_verdict_refuses_and_no_report_at_all_promotes(deployments):
    deployments, model = deployments
    await _canary(deployments, model)
    await deployments.rollback(NAME)
    await _until(lambda: _settled(deployments))
    report(revision_url(3), passed=False)  # sealed before revision 3 existed: about what had its URL then
    time.sleep(0.01)
    await _canary(deployments, model, 3)  # revision 3, nothing evaluated it: promoted as before
    await deployments.promote(NAME)
    await _until(lambda: _settled(deployments))
    assert deployments.get(NAME).config["serving"] == 3

    await _canary(deployments, model, 4)
    unjudged = report(revision_url(4), passed=None, verdict=False)
    with pytest.raises(Conflict, match="no gate verdict") as refused:
        await deployments.promote(NAME)
    assert unjudged in str(refused.value)


async def test_force_and_a_required_report_contradict_each_other(deployments):
    deployments, model = deployments
    await _canary(deployments, model)
    with pytest.raises(InvalidSpec) as refused:
        await deployments.promote(NAME, "/somewhere/report", force=True)
    assert refused.value.problems[0][0] == "force"


async def test_the_refusal_is_failed_precondition_over_grpc(deployments):
    deployments, model = deployments
    await _canary(deployments, model)
    failed = report(revision_url(2), passed=False)
    running = await start_server("serving-test", [registration(deployments)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.PromoteDeployment(serving_pb2.PromoteDeploymentRequest(name=NAME))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert failed in info.value.details()
            promoted = await stub.PromoteDeployment(
                serving_pb2.PromoteDeploymentRequest(name=NAME, force=True)
            )
            assert promoted.serving_revision == 2
    finally:
        await running.stop(0)
