"""The deployment's gRPC router against small real OIP v2 gRPC servers (KServe's generated stubs) on free ports."""

from __future__ import annotations

import random
import threading
import time
from concurrent import futures

import grpc
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from slmops.core.jobs.local_ray import free_port
from slmops.serving.grpc_router import serve_grpc_router
from slmops.serving.router import Router

KEY = "router-test-key"
AUTH = (("authorization", f"Bearer {KEY}"),)


class Upstream(pb_grpc.GRPCInferenceServiceServicer):
    """An OIP v2 gRPC server that answers with its own name and what it was sent."""

    def __init__(self, name: str):
        self.name = name
        self.cancelled = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def ServerLive(self, request, context):  # noqa: N802 (gRPC's name)
        return pb.ServerLiveResponse(live=True)

    def ModelInfer(self, request, context):  # noqa: N802
        if request.id == "slow":
            while context.is_active():
                time.sleep(0.02)
            self.cancelled.set()
            return pb.ModelInferResponse()
        if request.id == "busy":
            context.abort(grpc.StatusCode.UNAVAILABLE, "at capacity")
        metadata = dict(context.invocation_metadata())
        response = pb.ModelInferResponse(model_name=self.name, id=request.id)
        response.parameters["authorization"].string_param = metadata.get("authorization", "")
        response.parameters["x-caller"].string_param = metadata.get("x-caller", "")
        response.parameters["size"].int64_param = (
            len(request.raw_input_contents[0]) if request.raw_input_contents else 0
        )
        return response


@pytest.fixture(scope="module")
def upstreams():
    servers = {name: Upstream(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        server.server.stop(0)


@pytest.fixture()
def served():
    router = Router(rng=random.Random(7), max_body_bytes=64 * 1024)
    server = serve_grpc_router("127.0.0.1", 0, router, api_key=KEY)
    channel = grpc.insecure_channel(server.address)
    yield router, pb_grpc.GRPCInferenceServiceStub(channel), server
    channel.close()
    server.stop()


def _infer(stub, request_id: str = "x", **kwargs):
    return stub.ModelInfer.with_call(pb.ModelInferRequest(model_name="m", id=request_id), **kwargs)


def test_calls_follow_the_split_and_say_which_revision_answered(served, upstreams):
    router, stub, _ = served
    router.set_routes({1: ("http://127.0.0.1:1", 80, upstreams["a"].address),
                       2: ("http://127.0.0.1:2", 20, upstreams["b"].address)})  # fmt: skip
    answered = {"a": 0, "b": 0}
    for i in range(200):
        response, call = _infer(stub, f"r{i}", metadata=(*AUTH, ("x-caller", "me")))
        revision = dict(call.initial_metadata())["x-slmops-revision"]
        assert (revision, response.id) == ({"a": "1", "b": "2"}[response.model_name], f"r{i}")
        # The key and the caller's own metadata reach the predictor.
        assert response.parameters["authorization"].string_param == f"Bearer {KEY}"
        assert response.parameters["x-caller"].string_param == "me"
        answered[response.model_name] += 1
    assert 20 <= answered["b"] <= 60, answered  # 20% of 200, give or take


def test_the_key_is_required_but_for_the_probes(served, upstreams):
    router, stub, _ = served
    router.set_routes({1: ("http://127.0.0.1:1", 100, upstreams["a"].address)})
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", KEY),)):
        with pytest.raises(grpc.RpcError) as refused:
            _infer(stub, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # open, like the predictor's own probe


def test_a_deadline_and_a_cancellation_reach_the_predictor(served, upstreams):
    router, stub, _ = served
    router.set_routes({1: ("http://127.0.0.1:1", 100, upstreams["a"].address)})
    upstreams["a"].cancelled.clear()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as late:
        _infer(stub, "slow", metadata=AUTH, timeout=0.5)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    assert upstreams["a"].cancelled.wait(5), "the predictor's call went on after the caller's deadline"
    assert _wait(lambda: router.in_flight(1) == 0)

    upstreams["a"].cancelled.clear()
    pending = stub.ModelInfer.future(pb.ModelInferRequest(model_name="m", id="slow"), metadata=AUTH)
    assert _wait(lambda: router.in_flight(1) == 1)  # a gRPC call holds its revision like an HTTP request
    pending.cancel()
    assert upstreams["a"].cancelled.wait(5), "the predictor's call went on after the caller cancelled"
    assert _wait(lambda: router.in_flight(1) == 0)


def test_an_unreachable_revision_is_skipped_and_errors_pass_through(served, upstreams):
    router, stub, _ = served
    router.set_routes({1: ("http://127.0.0.1:1", 50, f"127.0.0.1:{free_port()}"),
                       2: ("http://127.0.0.1:2", 50, upstreams["b"].address)})  # fmt: skip
    assert {_infer(stub, f"r{i}", metadata=AUTH)[0].model_name for i in range(10)} == {"b"}
    # A predictor that answers UNAVAILABLE itself (at capacity) is not asked again elsewhere.
    with pytest.raises(grpc.RpcError) as busy:
        _infer(stub, "busy", metadata=AUTH)
    assert (busy.value.code(), busy.value.details()) == (grpc.StatusCode.UNAVAILABLE, "at capacity")
    assert dict(busy.value.trailing_metadata())["x-slmops-revision"] == "2"
    router.set_routes({1: ("http://127.0.0.1:1", 100, f"127.0.0.1:{free_port()}")})
    with pytest.raises(grpc.RpcError) as down:
        _infer(stub, metadata=AUTH)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no revision of this deployment can answer (revision 1:" in down.value.details()
    router.set_routes({})
    with pytest.raises(grpc.RpcError) as empty:
        _infer(stub, metadata=AUTH)
    assert "no revision has traffic" in empty.value.details()


def test_message_size_limit_and_other_services(served, upstreams):
    router, stub, server = served
    router.set_routes({1: ("http://127.0.0.1:1", 100, upstreams["a"].address)})
    small = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x" * 1000])
    assert stub.ModelInfer(small, metadata=AUTH).parameters["size"].int64_param == 1000
    large = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x" * (65 * 1024)])
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(large, metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(server.address) as channel:
        other = channel.unary_unary("/some.Other/Method")
        with pytest.raises(grpc.RpcError) as unknown:
            other(b"", metadata=AUTH)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_port_in_use_is_refused(served):
    router, _, server = served
    with pytest.raises(OSError, match="cannot listen"):
        serve_grpc_router("127.0.0.1", server.port, router)


def _wait(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
