"""A deployment's predictor limits on the local backend: a real predictor serving a tiny ORT GenAI model
refuses, through the deployment's router and at its revision's own URL, a max_tokens over the limit (400)
and a body over max_body_bytes (413), and answers what is within them."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from slmops.core import predictor_key
from slmops.core.jobs.store import JobStore
from slmops.serving.deployments import Deployments, revision_id
from tests.integration._models import tiny_onnx

pytestmark = pytest.mark.integration

LIMITS = {"max_tokens": 8, "max_body_bytes": 4096, "max_queue": 4}


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_the_predictors_refuse_what_the_deployments_limits_refuse(
    tmp_path_factory, tmp_path, monkeypatch
):
    model = tiny_onnx(tmp_path_factory)
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(model.parent))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(predictor_key.ensure(tmp_path / "data")))
    key = {"Authorization": f"Bearer {predictor_key.read()}"}
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), poll_s=0.5)
    deployments.resume()
    try:
        await deployments.create({"name": "tiny", "model_uri": str(model), "limits": LIMITS})

        def ready() -> bool:
            record = deployments.get("tiny")
            return record.state == "READY" and record.result.get("settled") == record.config.get("generation")

        await until(ready, 120)
        router = deployments.get("tiny").result["url"]
        alone = deployments.store.get(revision_id("tiny", 1)).result["url"]
        with httpx.Client(trust_env=False, timeout=60, headers=key) as http:

            def complete(url: str, max_tokens: int, prompt: str = "hello") -> httpx.Response:
                return http.post(f"{url}/openai/v1/completions", json={
                    "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})  # fmt: skip

            for url in (router, alone):
                assert complete(url, 8).status_code == 200, url
                too_many = complete(url, 9)
                assert too_many.status_code == 400 and "at most 8" in too_many.text, (url, too_many.text)
                too_large = complete(url, 2, "x" * 5000)
                assert too_large.status_code == 413 and "4096" in too_large.text, (url, too_large.text)
    finally:
        await deployments.close()
