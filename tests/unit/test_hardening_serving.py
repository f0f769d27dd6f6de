"""The serving service under attack and faults: a deployment's router takes bounded bodies in bounded
time and only with the predictors' key; a model whose files changed since they were sealed is never
served; a slow readiness probe does not restart a predictor.

Routers run in process on loopback in front of a stand-in predictor (a small HTTP server that counts
what reaches it); the local backend starts a stand-in predictor program that takes the real one's flags.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from slmops.core import artifacts
from slmops.core.jobs.store import JobStore
from slmops.serving.backends import FAILED, READY, Revision
from slmops.serving.backends.local import LocalBackend
from slmops.serving.deployments import Deployments, revision_id
from slmops.serving.router import Router, RouterServer

KEY = "k-" + "0123456789abcdef" * 2
CAP = 1 << 20  # the predictor's default body limit
MiB = 1 << 20


class Upstream:
    """A stand-in predictor on loopback that answers 200 and keeps every request it receives."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                seen.append(
                    (
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                    )
                )
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def router(upstream):
    """A router in front of the stand-in, with the predictors' key and a 1 s body deadline."""
    server = RouterServer(Router({1: (upstream.url, 100)}, api_key=KEY, body_timeout_s=1.0)).start()
    yield server
    server.stop()


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=10)


def _read_all(sock: socket.socket, into: bytearray) -> None:
    """Read the answer until the router ends the connection."""
    try:
        while chunk := sock.recv(65536):
            into += chunk
    except OSError:
        pass


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def _head(path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: router", f"Authorization: Bearer {KEY}", *lines])
            + "\r\n\r\n").encode()  # fmt: skip


@pytest.mark.reliability(
    "a 200 MB request body streamed (chunked) at a deployment's router",
    expected="413 naming the limit as soon as 1 MiB passes; router RSS grows < 40 MB; predictor sees nothing",
)
def test_a_huge_streamed_body_is_refused_without_being_held(probe, router, upstream):
    baseline = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    frame = f"{MiB:x}\r\n".encode() + b"x" * MiB + b"\r\n"
    sent, answer = 0, bytearray()
    started = time.monotonic()
    with _connect(router.url) as sock:
        reader = threading.Thread(target=_read_all, args=(sock, answer), daemon=True)
        reader.start()
        sock.sendall(_head("/v1/completions", "Content-Type: application/json", "Transfer-Encoding: chunked"))
        try:
            while sent < 200 * MiB:
                sock.sendall(frame)
                sent += MiB
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the router ended the connection: the rest of the body is not read
        reader.join(10)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    grew = (peak - baseline) / MiB
    probe.saw(f"{_status(bytes(answer))} after {sent // MiB} MiB sent in {elapsed:.2f} s; RSS grew "
              f"{grew:.1f} MB; predictor saw {len(upstream.seen)} requests")  # fmt: skip
    assert _status(bytes(answer)) == 413, bytes(answer[:300])
    assert f"larger than {CAP} bytes".encode() in answer and b"max_body_bytes" in answer
    assert grew < 40, f"the router's process grew {grew:.1f} MB"
    assert sent < 200 * MiB, "the router read the whole body"
    assert upstream.seen == []


@pytest.mark.reliability(
    "a request whose Content-Length is over the body limit (1 GB announced, nothing sent)",
    expected="413 at once, before any body is read; predictor sees nothing",
)
def test_a_content_length_over_the_limit_is_refused_at_once(probe, router, upstream):
    answer = bytearray()
    started = time.monotonic()
    with _connect(router.url) as sock:
        sock.sendall(_head("/v1/completions", "Content-Type: application/json", "Content-Length: 1000000000"))
        _read_all(sock, answer)  # ends when the router closes the connection
    elapsed = time.monotonic() - started
    probe.saw(f"{_status(bytes(answer))} in {elapsed:.2f} s; predictor saw {len(upstream.seen)} requests")
    assert _status(bytes(answer)) == 413 and elapsed < 1.0
    assert json.loads(bytes(answer).split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    assert upstream.seen == []


@pytest.mark.reliability(
    "a slow upload: headers and 5 of 100 announced body bytes, then silence",
    expected="408 within the body deadline (1 s here) and the connection closed; predictor sees nothing",
)
def test_a_slow_upload_gets_408_and_is_cut_off(probe, router, upstream):
    answer = bytearray()
    started = time.monotonic()
    with _connect(router.url) as sock:
        sock.sendall(
            _head("/v1/completions", "Content-Type: application/json", "Content-Length: 100") + b'{"mo'
        )
        _read_all(sock, answer)
    elapsed = time.monotonic() - started
    probe.saw(
        f"{_status(bytes(answer))} and closed after {elapsed:.2f} s; predictor saw {len(upstream.seen)}"
    )
    assert _status(bytes(answer)) == 408 and elapsed < 3.0
    assert b"connection: close" in answer.lower() and b"body_timeout_s" in answer
    assert upstream.seen == []


@pytest.mark.reliability(
    "a request to a deployment's router without the predictors' key (none, then a wrong one)",
    expected="401 with WWW-Authenticate: Bearer, before the body is read; predictor sees nothing",
)
def test_the_router_requires_the_predictors_key(probe, router, upstream):
    with httpx.Client(base_url=router.url, trust_env=False, timeout=10) as client:
        body = {"model": "m", "prompt": "hi"}
        missing = client.post("/v1/completions", json=body)
        wrong = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer not-the-key"})
        assert upstream.seen == []
        health = client.get("/router/health")
        passed = client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    probe.saw(f"{missing.status_code} without, {wrong.status_code} with a wrong key (predictor saw none); "
              f"{passed.status_code} with it; health {health.status_code} without")  # fmt: skip
    for refused in (missing, wrong):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert health.status_code == 200
    assert passed.status_code == 200 and len(upstream.seen) == 1
    assert upstream.seen[0][2]["authorization"] == f"Bearer {KEY}"  # the predictor checks it too


# -- the local backend's predictors ------------------------------------------------------------------

STAND_IN = r"""
import argparse, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
for flag in ("--model-dir", "--name", "--host", "--http-port", "--grpc-port", "--max-body-bytes",
             "--api-key-file"):
    parser.add_argument(flag, default="")
args, _ = parser.parse_known_args()
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "starts.jsonl"), "a") as fh:
    fh.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/v2/health/ready":
            try:
                time.sleep(float(open(os.path.join(here, "delay")).read() or 0))
            except (OSError, ValueError):
                pass
        else:
            with open(os.path.join(here, "requests.jsonl"), "a") as fh:
                fh.write(json.dumps({"path": self.path, "auth": self.headers.get("authorization")}) + "\n")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


ThreadingHTTPServer((args.host, int(args.http_port)), Handler).serve_forever()
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """The stand-in predictor program's folder (its starts.jsonl, requests.jsonl, and `delay` for probes)."""
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.delenv("SLMOPS_PREDICTOR_API_KEY_FILE", raising=False)
    folder = tmp_path / "stand-in"
    folder.mkdir()
    (folder / "predictor.py").write_text(STAND_IN)
    return folder


def _starts(folder: Path) -> list[dict]:
    path = folder / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _backend(tmp_path: Path, folder: Path, **options) -> LocalBackend:
    return LocalBackend(tmp_path / "logs", program=[sys.executable, str(folder / "predictor.py")], **options)


def _model(tmp_path: Path) -> str:
    model = tmp_path / "model"  # a plain Hugging Face folder outside the artifact root
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return artifacts.to_uri(model)


def _until(check, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def _ready(backend: LocalBackend, name: str) -> None:
    _until(lambda: backend.status(name).state == READY)


@pytest.mark.reliability(
    "the local backend's predictor answers one readiness probe slower than the probe's 2 s timeout",
    expected="no restart: same process, still READY and serving",
)
def test_one_slow_readiness_probe_does_not_restart_the_predictor(probe, tmp_path, stand_in):
    # Started long enough ago (start timeout 0.5 s) that a miss could pass for a failed start.
    backend = _backend(tmp_path, stand_in, start_timeout_s=0.5)
    try:
        backend.apply("slow", Revision(1, _model(tmp_path), _model(tmp_path)))
        _ready(backend, "slow")
        time.sleep(0.6)
        (stand_in / "delay").write_text("2.5")
        started = time.monotonic()
        slow = backend.status("slow")  # one probe, timed out after 2 s
        took = time.monotonic() - started
        (stand_in / "delay").write_text("0")
        after = backend.status("slow")
    finally:
        backend.close()
    starts = _starts(stand_in)
    probe.saw(f"probe timed out after {took:.1f} s; state {slow.state} then {after.state}; "
              f"{len(starts)} start(s) of the predictor")  # fmt: skip
    assert took >= 2.0
    assert slow.state == READY and after.state == READY and after.traffic == {1: 100}
    assert len(starts) == 1


@pytest.mark.reliability(
    "the local backend's predictor misses three readiness probes in a row (each over its timeout)",
    expected="the predictor is stopped and started again",
)
def test_three_missed_readiness_probes_restart_the_predictor(probe, tmp_path, stand_in):
    backend = _backend(tmp_path, stand_in, ready_timeout_s=0.3)
    try:
        backend.apply("hung", Revision(1, _model(tmp_path), _model(tmp_path)))
        _ready(backend, "hung")
        (stand_in / "delay").write_text("1.0")
        states = [backend.status("hung").state for _ in range(2)]
        assert len(_starts(stand_in)) == 1, "restarted before its third miss"
        third = backend.status("hung")
        (stand_in / "delay").write_text("0")
        _ready(backend, "hung")  # started again after its backoff
    finally:
        backend.close()
    starts = _starts(stand_in)
    probe.saw(f"states after misses 1-2: {states}; after the 3rd: {third.state} ({third.reason}); "
              f"{len(starts)} starts")  # fmt: skip
    assert states == [READY, READY] and third.state != READY and "3 readiness probes" in third.reason
    assert len(starts) == 2 and starts[0]["pid"] != starts[1]["pid"]


@pytest.mark.reliability(
    "a request without the key to a local deployment, with SLMOPS_PREDICTOR_API_KEY_FILE set",
    expected="predictor started with --api-key-file; router answers 401 and the predictor sees nothing",
)
def test_local_predictors_get_the_key_file_and_their_router_checks_it(probe, tmp_path, stand_in, monkeypatch):
    key_file = tmp_path / "predictor-key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(key_file))
    backend = _backend(tmp_path, stand_in)
    try:
        applied = backend.apply("keyed", Revision(1, _model(tmp_path), _model(tmp_path)))
        _ready(backend, "keyed")
        with httpx.Client(base_url=applied["url"], trust_env=False, timeout=10) as client:
            refused = client.get("/v1/models")
            seen_before = (stand_in / "requests.jsonl").exists()
            passed = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    finally:
        backend.close()
    argv = _starts(stand_in)[0]["argv"]
    probe.saw(f"--api-key-file passed: {'--api-key-file' in argv}; {refused.status_code} without the key "
              f"(predictor saw a request: {seen_before}); {passed.status_code} with it")  # fmt: skip
    assert argv[argv.index("--api-key-file") + 1] == str(key_file)
    assert argv[argv.index("--max-body-bytes") + 1] == str(CAP)
    assert refused.status_code == 401 and not seen_before
    assert passed.status_code == 200


def _tampered_artifact(tmp_path: Path) -> str:
    """A sealed checkpoint under the artifact root with one byte of its weights changed after the seal."""
    uri = f"{artifacts.to_uri(tmp_path / 'data' / 'artifacts')}/checkpoint/student"
    folder = artifacts.local_path(uri)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    artifacts.finalize(uri, "checkpoint")
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[1000] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(weights))
    return uri


async def _failed(deployments: Deployments, name: str):
    deadline = time.monotonic() + 10
    while (record := await asyncio.to_thread(deployments.get, name)).state != "FAILED":
        assert time.monotonic() < deadline, f"still {record.state}: {record.message}"
        await asyncio.sleep(0.1)
    return record


@pytest.mark.reliability(
    "a sealed model artifact with one byte of its weights changed, deployed on the local backend",
    expected="deployment and revision FAILED naming model.safetensors; no predictor started",
)
async def test_a_changed_model_file_fails_the_local_deployment(probe, tmp_path, stand_in):
    uri = _tampered_artifact(tmp_path)
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=_backend(tmp_path, stand_in),
                              poll_s=0.1)  # fmt: skip
    try:
        await deployments.create({"name": "student", "model_uri": uri})
        record = await _failed(deployments, "student")
        revision = await asyncio.to_thread(deployments.store.get, revision_id("student", 1))
    finally:
        await deployments.close()
    probe.saw(f"{record.state}: ...{record.reason.partition(' its manifest')[2][:80]}; revision "
              f"{revision.state}; {len(_starts(stand_in))} predictor starts")  # fmt: skip
    assert "model.safetensors changed since it was sealed" in record.reason
    assert revision.state == FAILED and "model.safetensors" in revision.reason
    assert _starts(stand_in) == []


class _HandOver:
    """A backend that serves what it is handed without checking its files (as KServe does)."""

    def __init__(self):
        self.applied: list[Revision] = []

    def apply(self, name, revision, record_dir=None):
        self.applied.append(revision)
        return {}

    def status(self, name):
        from slmops.core.errors import NotFound
        from slmops.serving.backends import BackendStatus

        if not self.applied:
            raise NotFound("deployment", name)
        return BackendStatus(state=READY, url="http://127.0.0.1:1", ready_revision=1, traffic={1: 100})

    def restore(self, name, revisions, runtime, serving, latest, percent):
        pass

    def delete(self, name):
        self.applied.clear()

    set_traffic = promote = rollback = lambda self, *args, **kwargs: None


@pytest.mark.reliability(
    "a sealed model artifact on the shared claim with one byte changed, deployed on the kserve backend",
    expected="deployment and revision FAILED naming model.safetensors; no InferenceService made",
)
async def test_a_changed_model_file_fails_before_kserve_gets_it(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "kserve")
    monkeypatch.setenv("SLMOPS_SHARED_CLAIM", "slmops-artifacts")
    monkeypatch.setenv("SLMOPS_SHARED_MOUNT_PATH", str(tmp_path / "data" / "artifacts"))
    uri = _tampered_artifact(tmp_path)
    backend = _HandOver()
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=backend, poll_s=0.1)
    try:
        await deployments.create({"name": "student", "model_uri": uri})
        record = await _failed(deployments, "student")
        revision = await asyncio.to_thread(deployments.store.get, revision_id("student", 1))
    finally:
        await deployments.close()
    probe.saw(f"{record.state}: ...{record.reason.partition(' its manifest')[2][:80]}; revision "
              f"{revision.state}; {len(backend.applied)} handed to the backend")  # fmt: skip
    assert "model.safetensors changed since it was sealed" in record.reason
    assert revision.state == FAILED and "model.safetensors" in revision.reason
    assert backend.applied == []
