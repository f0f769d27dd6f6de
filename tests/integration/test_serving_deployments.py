"""Deployments on the shared lifecycle with real predictor processes serving a tiny ORT GenAI model.

A predictor killed with SIGKILL is started again on the same URL; a restarted
service adopts a live predictor and starts a stopped one, never two.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from slmops.core.jobstore import JobStore
from slmops.serving.deployments import Deployments
from tests.integration._models import tiny_onnx

pytestmark = pytest.mark.integration


async def until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)
    return time.monotonic() - start


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch):
    model = tiny_onnx(tmp_path_factory)
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(model.parent))
    return model, f"sqlite:///{tmp_path}/serving.db"


async def test_a_killed_predictor_comes_back_and_a_restart_never_starts_two(env):
    model, db = env
    first = Deployments(JobStore(db), poll_s=0.5)
    first.resume()
    await first.create({"name": "tiny", "model_uri": str(model)})
    await until(lambda: first.get("tiny").state == "READY", 120)
    record = first.get("tiny")
    url, pid = record.result["url"], record.result["pid"]
    assert ready(url) and record.output_uri  # the deployment artifact

    os.kill(pid, signal.SIGKILL)
    back = await until(lambda: first.get("tiny").result.get("pid") not in (None, pid)
                       and first.get("tiny").state == "READY", 30)  # fmt: skip
    again = first.get("tiny")
    assert again.result["url"] == url and ready(url), back
    messages = [e.message for e in first.store.events("tiny")]
    assert "predictor gone; started it again" in messages, [(e.state, e.message) for e in first.store.events("tiny")]

    # The service stops (its predictors with it); the next one starts the predictor again, once.
    await first.close(stop_predictors=True)
    await until(lambda: not ready(url), 15)
    second = Deployments(JobStore(db), poll_s=0.5)
    second.resume()
    stopped = again.result["pid"]
    await until(lambda: second.get("tiny").result["pid"] != stopped and ready(url), 60)
    restarted = second.get("tiny").result["pid"]
    await second.close(stop_predictors=False)  # the predictor keeps running

    third = Deployments(JobStore(db), poll_s=0.5)
    third.resume()
    await asyncio.sleep(2.0)
    assert third.get("tiny").result["pid"] == restarted  # adopted, not started a second time
    deleted = await third.delete("tiny")
    assert deleted.state == "DELETED"
    await until(lambda: not ready(url), 15)
    await third.close()
