"""The local traffic router against small real upstream HTTP servers on free ports."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route as HttpRoute

from slmops.core.errors import InvalidSpec
from slmops.serving.router import Route, Router, serve_router

CHUNKS = 4
CHUNK_DELAY_S = 0.25


class Upstream:
    """A Starlette app on uvicorn in a thread that answers with its own name."""

    def __init__(self, name: str):
        self.name = name
        self.stream_done = threading.Event()
        self.app = Starlette(routes=[
            HttpRoute("/openai/v1/completions", self.completions, methods=["POST"]),
            HttpRoute("/{path:path}", self.echo, methods=["GET", "POST", "PUT", "DELETE"]),
        ])  # fmt: skip
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    async def echo(self, request: Request) -> JSONResponse:
        if request.query_params.get("delay"):
            await asyncio.sleep(float(request.query_params["delay"]))
        body = await request.body()
        return JSONResponse(
            {"name": self.name, "method": request.method, "path": request.url.path,
             "query": request.url.query, "body": body.decode(), "headers": dict(request.headers)},
            headers={"x-upstream": self.name},
        )  # fmt: skip

    async def completions(self, request: Request) -> StreamingResponse | JSONResponse:
        payload = await request.json()
        if not payload.get("stream"):
            return JSONResponse({"name": self.name, "choices": [{"text": "hello"}]})
        self.stream_done.clear()

        async def events():
            for i in range(CHUNKS):
                yield f"data: {json.dumps({'name': self.name, 'i': i})}\n\n"
                await asyncio.sleep(CHUNK_DELAY_S)
            yield "data: [DONE]\n\n"
            self.stream_done.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def upstreams():
    servers = {name: Upstream(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture()
def served(upstreams):
    router = Router(rng=random.Random(1234))
    server = serve_router("127.0.0.1", 0, router)
    yield router, server.url
    server.stop()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed


def test_routes_are_checked():
    with pytest.raises(InvalidSpec) as caught:
        Router({1: ("http://a", 30), 2: ("ftp://b", 120)})
    fields = [field for field, _ in caught.value.problems]
    assert fields == ["routes[2].url", "routes[2].percent", "routes"]
    assert Router({1: Route("http://a", 100), 2: ("http://b", 0)}).routes()[2] == Route("http://b", 0)


def test_a_quarter_split_lands_within_binomial_tolerance(served, upstreams):
    router, url = served
    router.set_routes({1: (upstreams["a"].url, 25), 2: (upstreams["b"].url, 75)})
    n, p = 400, 0.25
    with httpx.Client(base_url=url) as client:
        names = [client.get("/v2/health/ready").json()["name"] for _ in range(n)]
    # 4 standard deviations of Binomial(400, 0.25) is about 35 requests: 65..135 to revision 1.
    tolerance = 4 * math.sqrt(n * p * (1 - p))
    assert abs(names.count("a") - n * p) <= tolerance
    assert names.count("a") + names.count("b") == n


def test_request_and_response_pass_through_and_name_the_revision(served, upstreams):
    router, url = served
    router.set_routes({3: (upstreams["a"].url, 50), 7: (upstreams["b"].url, 50)})
    revision_of = {"a": "3", "b": "7"}
    with httpx.Client(base_url=url) as client:
        for _ in range(20):
            resp = client.post("/v2/models/m/infer?x=1&y=%20z", content=b'{"k": 1}',
                               headers={"x-custom": "kept", "connection": "keep-alive, x-drop",
                                        "x-drop": "hop"})  # fmt: skip
            echo = resp.json()
            assert resp.status_code == 200
            assert resp.headers["x-slmops-revision"] == revision_of[echo["name"]]
            assert resp.headers["x-upstream"] == echo["name"]
            assert (echo["method"], echo["path"]) == ("POST", "/v2/models/m/infer")
            assert echo["query"] == "x=1&y=%20z"
            assert echo["body"] == '{"k": 1}'
            assert echo["headers"]["x-custom"] == "kept"
            assert "x-drop" not in echo["headers"]
    assert set(revision_of.values()) >= {"3", "7"}


def test_health_lists_revisions(served, upstreams):
    router, url = served
    assert httpx.get(f"{url}/router/health").status_code == 503  # no routes yet
    router.set_routes({1: (upstreams["a"].url, 0), 2: (upstreams["b"].url, 100)})
    health = httpx.get(f"{url}/router/health")
    assert health.status_code == 200
    assert health.json() == {"ready": True, "revisions": [
        {"revision": 1, "url": upstreams["a"].url, "percent": 0},
        {"revision": 2, "url": upstreams["b"].url, "percent": 100},
    ]}  # fmt: skip


def test_shifting_all_traffic_while_requests_are_in_flight(served, upstreams):
    router, url = served
    router.set_routes({1: (upstreams["a"].url, 50), 2: (upstreams["b"].url, 50)})
    switched, stop = threading.Event(), threading.Event()
    results = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                after = switched.is_set()
                resp = client.get("/slow?delay=0.02")
                results.append((after, resp.status_code, resp.headers.get("x-slmops-revision")))

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(results) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker) for _ in range(4)]
        wait_for(40)
        router.set_routes({1: (upstreams["a"].url, 100), 2: (upstreams["b"].url, 0)})
        switched.set()
        wait_for(len(results) + 40)
        stop.set()
        for future in futures:
            future.result()
    assert len(results) >= 80
    assert all(status == 200 for _, status, _ in results)
    before = [rev for after, _, rev in results if not after]
    assert {"1", "2"} <= set(before)  # the split was live before the switch
    assert {rev for after, _, rev in results if after} == {"1"}


def test_a_stream_passes_through_chunk_by_chunk(served, upstreams):
    router, url = served
    router.set_routes({1: (upstreams["a"].url, 0), 2: (upstreams["b"].url, 100)})
    upstream = upstreams["b"]
    arrived = []
    started = time.monotonic()
    body = {"model": "m", "prompt": "hi", "stream": True}
    with httpx.stream("POST", f"{url}/openai/v1/completions", json=body, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-slmops-revision"] == "2"
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrived.append((line[6:], time.monotonic() - started, upstream.stream_done.is_set()))
    assert [data for data, _, _ in arrived][-1] == "[DONE]"
    assert len(arrived) == CHUNKS + 1
    first_data, first_at, upstream_finished = arrived[0]
    assert json.loads(first_data) == {"name": "b", "i": 0}
    assert not upstream_finished, "the first chunk waited for the whole stream"
    assert arrived[-1][1] - first_at >= (CHUNKS - 1) * CHUNK_DELAY_S


def test_a_caller_that_leaves_mid_stream_stops_the_upstream(served, upstreams):
    router, url = served
    router.set_routes({1: (upstreams["a"].url, 100)})
    upstream = upstreams["a"]
    body = {"model": "m", "prompt": "hi", "stream": True}
    with httpx.stream("POST", f"{url}/openai/v1/completions", json=body, timeout=10) as resp:
        first = next(line for line in resp.iter_lines() if line.startswith("data: "))
    assert json.loads(first[6:]) == {"name": "a", "i": 0}
    time.sleep(CHUNKS * CHUNK_DELAY_S + 0.5)
    assert not upstream.stream_done.is_set(), "the router kept reading a stream nobody wanted"


def test_an_upstream_that_stopped_is_routed_around(served, upstreams):
    router, url = served
    doomed = Upstream("c")
    router.set_routes({1: (upstreams["a"].url, 50), 2: (doomed.url, 50)})
    with httpx.Client(base_url=url) as client:
        assert {client.get("/x").json()["name"] for _ in range(20)} == {"a", "c"}
        doomed.stop()
        answers = [client.get("/x") for _ in range(40)]
    assert all(resp.status_code == 200 for resp in answers)
    assert {resp.headers["x-slmops-revision"] for resp in answers} == {"1"}


def test_zero_percent_gets_nothing_even_when_the_rest_is_down(served, upstreams):
    router, url = served
    router.set_routes({1: (dead_url(), 100), 2: (upstreams["a"].url, 0)})
    resp = httpx.get(f"{url}/x")
    assert resp.status_code == 503


def test_every_upstream_down_is_503_with_retry_after(served):
    router, url = served
    router.set_routes({1: (dead_url(), 60), 2: (dead_url(), 40)})
    resp = httpx.post(f"{url}/openai/v1/completions", json={"model": "m", "prompt": "hi"})
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    error = resp.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "service_unavailable"
    assert "revision 1" in error["message"] and "revision 2" in error["message"]
