"""core/clients.py `call` on a real in-process gRPC server: what it retries, what it waits for."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from slmops.api.v1 import common_pb2, training_pb2, training_pb2_grpc
from slmops.core import clients


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Servicer(training_pb2_grpc.TrainingServiceServicer):
    """Answers GetTrainingJob with `codes` in turn (None: a job), counting the calls."""

    def __init__(self, *codes: grpc.StatusCode | None):
        self.codes = list(codes)
        self.calls = 0

    def GetTrainingJob(self, request, context):
        self.calls += 1
        code = self.codes.pop(0) if self.codes else None
        if code is not None:
            context.abort(code, f"attempt {self.calls}")
        return training_pb2.TrainingJob(id=request.id)


def _serve(servicer: Servicer, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture(autouse=True)
def plain_channels(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))  # no stack token, no TLS
    yield
    clients.close()


def _get(port: int, timeout: float = 10.0) -> training_pb2.TrainingJob:
    stub = clients.stub("training", f"127.0.0.1:{port}")
    return clients.call(stub.GetTrainingJob, common_pb2.GetJobRequest(id="job-1"), timeout=timeout)


def test_unavailable_answers_are_retried_until_one_succeeds():
    servicer = Servicer(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    server, port = _serve(servicer)
    try:
        assert _get(port).id == "job-1"
    finally:
        server.stop(0)
    assert servicer.calls == 3


def test_unavailable_is_retried_a_bounded_number_of_times():
    servicer = Servicer(*[grpc.StatusCode.UNAVAILABLE] * 10)
    server, port = _serve(servicer)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _get(port)
    finally:
        server.stop(0)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    max_attempts = clients.SERVICE_CONFIG["methodConfig"][0]["retryPolicy"]["maxAttempts"]
    assert servicer.calls == max_attempts == 5


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL])
def test_other_codes_fail_at_once(code):
    servicer = Servicer(code)
    server, port = _serve(servicer)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _get(port)
    finally:
        server.stop(0)
    assert caught.value.code() == code
    assert servicer.calls == 1


def test_a_call_waits_for_a_service_that_is_still_starting():
    port = free_port()
    servicer = Servicer()
    started: list[grpc.Server] = []
    # Longer than gRPC's retries could bridge (backoffs of at most 0.2 + 0.4 + 0.8 + 1.6 s).
    starter = threading.Timer(4.0, lambda: started.append(_serve(servicer, port)[0]))
    starter.start()
    begun = time.monotonic()
    try:
        assert _get(port).id == "job-1"
    finally:
        starter.join()
        for server in started:
            server.stop(0)
    assert time.monotonic() - begun >= 3.9
    assert servicer.calls == 1


def test_a_service_that_never_comes_fails_at_the_deadline():
    begun = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        _get(free_port(), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - begun < 5
