"""The predictor's request limits, in process on the tiny ORT GenAI model: bounded lists, deep JSON,
admission before tokenizing, and tokenizing off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from slmops.predictor.engines import Sampling
from slmops.predictor.loading import load_engine
from slmops.predictor.model import GenerationModel
from slmops.predictor.openai_api import make_router
from slmops.predictor.scheduler import Job, Limits
from slmops.predictor.served import Served
from tests.integration._models import tiny_onnx

NAME = "tiny"
DEEP = 100_000


class CountingTokenizer:
    """An engine whose encode is counted and, while `hold` is set, waits until released (at most 5 s)."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.calls = 0
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.holding = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        if self.hold:
            self.holding = True
            self.entered.set()
            self.release.wait(5)
            self.holding = False
        return self._engine.encode(text)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = load_engine(tiny_onnx(tmp_path_factory))
    yield engine
    engine.close()


@pytest.fixture
def served(engine):
    served = Served.start(NAME, CountingTokenizer(engine), Limits(max_queue=4))
    yield served
    served.tokenizing.shutdown(wait=False)
    served.scheduler.stop()


def _app(served: Served) -> FastAPI:
    app = FastAPI()
    app.include_router(make_router(served))

    async def live() -> dict[str, bool]:
        return {"live": True}

    app.add_api_route("/v2/health/live", live, methods=["GET"])
    return app


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert "Traceback" not in body["message"]
    return body


@pytest.mark.parametrize(
    ("body", "param", "limit"),
    [
        ({"prompt": ["hi"] * 65}, "prompt", "64"),
        ({"prompt": ["hi"] * 5}, "prompt", "at most 4"),  # more than the queue holds: never admitted
        ({"prompt": "hi", "stop": ["x"] * 17}, "stop", "16"),
        ({"prompt": "hi", "stop": "s" * 257}, "stop", "256"),
        ({"prompt": "hi", "stop": ["a", "s" * 257]}, "stop", "256"),
        ({"prompt": "hi", "n": 17}, "n", "16"),
    ],
)  # fmt: skip
@pytest.mark.reliability(
    "a /v1/completions request with too many prompts, too many or too long stop strings, or too large n",
    expected="400 with a JSON error naming the field and its limit, before any prompt is tokenized",
)
def test_lists_past_their_limits_are_400_naming_the_limit(probe, served, body, param, limit):
    with TestClient(_app(served), raise_server_exceptions=False) as client:
        response = client.post("/v1/completions", json={"model": NAME, **body})
    error = _error(response, 400)
    assert error["param"] == param and limit in error["message"], error
    assert served.engine.calls == 0
    probe.saw(f"400 param={param}: {error['message'][:80]}; {served.engine.calls} tokenizer calls")


@pytest.mark.parametrize("shape", ["arrays", "objects"])
@pytest.mark.reliability(
    "a JSON body nested 100000 deep on the OpenAI routes and on /v2/models/{name}/infer",
    expected="400 with a JSON error; never 500, never a stack trace",
)
def test_a_deeply_nested_body_is_400(probe, served, shape):
    deep = "[" * DEEP + "]" * DEEP if shape == "arrays" else '{"a":' * DEEP + "1" + "}" * DEEP
    inner = '{"model": "tiny", "prompt": "hi", "stop": ' + deep + "}"
    app = _app(served)
    _add_oip_routes(app, served)
    seen = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, content in [("/v1/completions", deep), ("/v1/chat/completions", deep),
                              ("/v1/completions", inner), (f"/v2/models/{NAME}/infer", deep)]:  # fmt: skip
            response = client.post(path, content=content, headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, response.status_code, response.text[:300])
            assert "Traceback" not in response.text and response.json()
            seen.append(f"{path} {response.status_code}")
    probe.saw("; ".join(seen))


@pytest.mark.reliability(
    "a /v2/models/{name}/infer request whose data disagrees with its shape, or holds no strings",
    expected="400 naming the input; never 500 with the exception's text",
)
def test_an_infer_request_with_malformed_tensors_is_400(probe, served):
    def infer(data: list, shape: list[int], budget: Any = None) -> dict:
        inputs = [{"name": "text", "shape": shape, "datatype": "BYTES", "data": data}]
        if budget is not None:
            inputs.append({"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": budget})
        return {"inputs": inputs}

    app = FastAPI()
    _add_oip_routes(app, served)
    seen = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for body, words in [(infer(["a", "b"], [1]), "does not match its shape"),
                            (infer(["a"], [10**12]), "does not match its shape"),
                            (infer([{"a": 1}], [1]), "must hold strings"),
                            (infer(["a"] * 65, [65]), "at most 4"),
                            (infer(["a"], [1], [1, 2]), "does not match its shape")]:  # fmt: skip
            response = client.post(f"/v2/models/{NAME}/infer", json=body)
            assert response.status_code == 400 and words in response.text, (words, response.text[:300])
            seen.append(f"400 {words}")
    assert served.engine.calls == 0
    probe.saw("; ".join(seen))


def _add_oip_routes(app: FastAPI, served: Served) -> None:
    """KServe's v2 routes and error handlers on `app`, serving the model as the predictor does."""
    from kserve import ModelServer
    from kserve.protocol.rest.server import RESTServer

    server = ModelServer(http_port=0, enable_grpc=False)
    model = GenerationModel(served)
    model.load()
    server.register_model(model)
    rest = RESTServer(app, server.dataplane, server.model_repository_extension, 0)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)


@pytest.mark.reliability(
    "with the queue full, a request carries a prompt of about a million characters",
    expected="429 with Retry-After at once, the prompt never tokenized",
)
def test_a_full_queue_refuses_before_tokenizing(probe, served):
    served.scheduler.stop()  # nothing leaves the queue now
    fillers = [Job([1, 2], 1, Sampling(0.0, 1.0, None, None), lambda event: None) for _ in range(4)]
    served.scheduler.submit_all(fillers)
    huge = "lorem ipsum " * 80_000
    with TestClient(_app(served), raise_server_exceptions=False) as client:
        started = time.perf_counter()
        response = client.post("/v1/completions", json={"model": NAME, "prompt": huge})
        elapsed = time.perf_counter() - started
        error = _error(response, 429)
        assert response.headers["Retry-After"]
        chat = client.post("/v1/chat/completions", json={"model": NAME, "messages": [
            {"role": "user", "content": huge}]})  # fmt: skip
        _error(chat, 429)
    assert served.engine.calls == 0 and error["code"] == "rate_limit_exceeded"
    probe.saw(f"429 in {elapsed:.3f} s; {served.engine.calls} tokenizer calls")


@pytest.mark.reliability(
    "a long prompt is being tokenized",
    expected="the event loop still answers a health probe meanwhile (tokenizing runs in a worker thread)",
)
async def test_the_event_loop_answers_while_a_prompt_is_tokenized(probe, served):
    served.engine.hold = True
    transport = httpx.ASGITransport(app=_app(served))
    async with httpx.AsyncClient(transport=transport, base_url="http://predictor") as client:
        request = asyncio.create_task(
            client.post("/v1/completions", json={"model": NAME, "prompt": "hello " * 50, "max_tokens": 2})
        )
        assert await asyncio.to_thread(served.engine.entered.wait, 10)
        started = time.perf_counter()
        health = await asyncio.wait_for(client.get("/v2/health/live"), 3)
        elapsed = time.perf_counter() - started
        still_tokenizing = served.engine.holding
        served.engine.release.set()
        response = await asyncio.wait_for(request, 30)
    assert health.status_code == 200 and still_tokenizing, (health.status_code, still_tokenizing)
    assert response.status_code == 200, response.text
    probe.saw(f"health 200 in {elapsed * 1000:.0f} ms while the tokenizer was busy; completion 200")
