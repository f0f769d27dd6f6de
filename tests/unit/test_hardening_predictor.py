"""A predictor started with an API key: everything but the probes and /metrics needs it; KServe's model
repository calls are not served; /slmops/v1/info shows no absolute path.

One real predictor process (`python -m slmops.predictor`) on the tiny ORT GenAI model, on loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from slmops.core.jobs.local_ray import free_port
from tests.integration._models import tiny_onnx

NAME = "tiny"
KEY = "k-" + "0123456789abcdef" * 2
READY = "SLMOPS_PREDICTOR_READY "


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """(http URL, gRPC address) of a predictor that requires KEY."""
    folder = tmp_path_factory.mktemp("predictor-key")
    key_file = folder / "key"
    key_file.write_text(KEY + "\n")
    grpc_port = free_port()
    env = {**os.environ, "SLMOPS_DATA_DIR": str(folder), "PYTHONUNBUFFERED": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("SLMOPS_PREDICTOR_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "slmops.predictor", "--model-dir", str(tiny_onnx(tmp_path_factory)),
         "--name", NAME, "--http-port", "0", "--grpc-port", str(grpc_port), "--api-key-file", str(key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True).start()
    url = ""
    deadline = time.monotonic() + 90
    while not url and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith(READY):
            url = line[len(READY) :].strip()
    threading.Thread(target=lambda: list(process.stdout), daemon=True).start()
    if not url:
        process.kill()
        pytest.fail(f"predictor not ready:\n{''.join(errors)[-3000:]}")
    yield url, f"127.0.0.1:{grpc_port}"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def http(predictor):
    with httpx.Client(base_url=predictor[0], trust_env=False, timeout=30) as client:
        yield client


AUTH = {"Authorization": f"Bearer {KEY}"}
CLOSED = [
    ("POST", "/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 2}),
    (
        "POST",
        "/openai/v1/chat/completions",
        {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),  # fmt: skip
    (
        "POST",
        "/v1/chat/completions",
        {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),  # fmt: skip
    (
        "POST",
        f"/v2/models/{NAME}/infer",
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
    ),  # fmt: skip
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/redoc", None),
    ("GET", "/slmops/v1/info", None),
    ("GET", "/v2", None),
    ("POST", f"/v2/repository/models/{NAME}/load", None),
    ("POST", f"/v2/repository/models/{NAME}/unload", None),
    ("GET", "/v2/health/../models/tiny/infer", None),
]


@pytest.mark.reliability(
    "a client without the predictor's API key calls inference, the API docs, the info route, repository "
    "load/unload",
    expected="401 on every one; nothing runs",
)
def test_every_route_but_the_probes_needs_the_key(http, probe):
    answers = {}
    for method, path, body in CLOSED:
        request = http.build_request(method, path, json=body)
        request.url = request.url.copy_with(raw_path=path.encode())  # no client-side dot folding
        answers[path] = http.send(request).status_code
        if body is not None:  # a wrong key is no key
            wrong = http.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
    assert set(answers.values()) == {401}, answers
    probe.saw(f"401 on all {len(answers)} routes without the key (and with a wrong one)")


@pytest.mark.reliability(
    "an orchestrator probes a predictor that requires a key", expected="health, readiness and /metrics answer"
)
def test_probes_and_metrics_stay_open(http, probe):
    codes = {path: http.get(path).status_code for path in
             ("/", "/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready", "/metrics")}  # fmt: skip
    assert set(codes.values()) == {200}, codes
    probe.saw(f"200 on {', '.join(codes)} without a key")


@pytest.mark.reliability(
    "a key holder asks the predictor to load or unload a model by name, or for its API docs",
    expected="404: the model repository routes and the docs are not served",
)
def test_repository_routes_and_docs_are_not_served(http, probe):
    codes = {
        path: http.request(method, path, headers=AUTH).status_code
        for method, path in (
            ("POST", f"/v2/repository/models/{NAME}/unload"),
            ("GET", "/v2/repository/index"),
            ("POST", f"/v2/repository/models/{NAME}/load"),
            ("GET", "/docs"),
            ("GET", "/openapi.json"),
        )  # fmt: skip
    }
    assert set(codes.values()) == {404}, codes
    # the model is still served
    answer = http.post("/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 2}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    probe.saw(f"404 on {len(codes)} repository/docs routes; completions still 200 with the key")


@pytest.mark.reliability(
    "a gRPC client calls RepositoryModelUnload/Load on the predictor, with and without the key",
    expected="UNAUTHENTICATED without it, UNIMPLEMENTED with it; the model stays loaded",
)
def test_grpc_repository_calls_are_not_served(predictor, probe):
    with grpc.insecure_channel(predictor[1]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        seen = []
        for call, request in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=NAME)),
                              (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=NAME))):  # fmt: skip
            for metadata, expected in (((), grpc.StatusCode.UNAUTHENTICATED),
                                       ((("authorization", f"Bearer {KEY}"),), grpc.StatusCode.UNIMPLEMENTED)):  # fmt: skip
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, metadata=metadata, timeout=10)
                assert refused.value.code() == expected
                seen.append(expected.name)
        ready = stub.ModelReady(pb.ModelReadyRequest(name=NAME), timeout=10)
        assert ready.ready
    probe.saw(f"{' / '.join(dict.fromkeys(seen))}; ModelReady still true")


@pytest.mark.reliability(
    "a key holder reads /slmops/v1/info", expected="the model folder's name, never its absolute path"
)
def test_info_shows_no_absolute_path(http, probe):
    info = http.get("/slmops/v1/info", headers=AUTH).json()
    assert info["model"] == NAME
    assert info["model_dir"].startswith("qwen2-tiny") and "/" not in info["model_dir"]
    assert "/" not in str(info.get("adapters"))
    probe.saw(f"model_dir={info['model_dir']!r}")


@pytest.mark.reliability(
    "`slmops up` starts the stack's services and Ray head; another local user reads the predictor key",
    expected="a 0600 key file, named by SLMOPS_PREDICTOR_API_KEY_FILE in the services' and the Ray head's env",
)
def test_up_makes_a_private_predictor_key_and_gives_it_to_services_and_ray(tmp_path, monkeypatch, probe):
    from types import SimpleNamespace

    from slmops.cli import stack

    env_name = "SLMOPS_PREDICTOR_API_KEY_FILE"
    monkeypatch.delenv(env_name, raising=False)
    seen: dict[str, dict[str, str]] = {}

    def fake_head(data_dir, num_cpus=None):
        seen["ray"] = dict(os.environ)  # the head is started from this process's env
        process = SimpleNamespace(pid=2**22 + 1)
        return SimpleNamespace(process=process, address="http://127.0.0.1:1", log_path=tmp_path / "ray.log",
                               temp_dir=str(tmp_path / "ray-tmp"), temp_dir_owned=False)  # fmt: skip

    def fake_service(name, port, env, logs, timeout=60.0):
        seen[name] = dict(env)
        return stack.StartedService(name, 2**22 + 2, f"127.0.0.1:{port}", str(logs / f"{name}.log"))

    monkeypatch.setattr(stack, "start_head", fake_head)
    monkeypatch.setattr(stack, "_start_service", fake_service)
    record = stack.up(tmp_path / "data", free_ports=True, say=lambda *_: None)
    key_file = tmp_path / "data" / "auth" / "predictor-key"
    assert record["auth"]["predictor_key_file"] == str(key_file)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key_file.read_text().strip()) >= 32
    assert {env.get(env_name) for env in seen.values()} == {str(key_file)}
    assert set(seen) == {"ray", *stack.SERVICES}
    assert env_name not in os.environ  # only while the head started
    stack.down(tmp_path / "data", say=lambda *_: None)
    assert key_file.exists()  # `down` leaves it, like the token
    # a configured file wins: nothing is made
    monkeypatch.setenv(env_name, str(tmp_path / "mounted-key"))
    assert stack.predictor_key_env(tmp_path / "other") == {env_name: str(tmp_path / "mounted-key")}
    assert not (tmp_path / "other" / "auth" / "predictor-key").exists()
    probe.saw(
        f"key file mode {oct(key_file.stat().st_mode & 0o777)}; env of ray + {len(seen) - 1} services names it"
    )


@pytest.mark.reliability(
    "`slmops serve MODEL` is run without any key flag",
    expected="the predictor requires a key (made 0600 in the data dir); only --no-api-key serves it open",
)
def test_serve_requires_a_key_unless_told_otherwise(tmp_path, monkeypatch, capsys, probe):
    from slmops.cli.main import build_parser

    for name in ("SLMOPS_PREDICTOR_API_KEY_FILE", "SLMOPS_PREDICTOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    seen: list[list[str]] = []

    def fake_exec(path, argv):
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_exec)
    for extra in ([], ["--no-api-key"]):
        args = build_parser().parse_args(["serve", str(tmp_path), *extra])
        with pytest.raises(SystemExit):
            args.func(args)
    by_default, opened = (dict(zip(argv[3::2], argv[4::2], strict=False)) for argv in seen)
    key_file = tmp_path / "data" / "auth" / "predictor-key"
    assert by_default["--api-key-file"] == str(key_file)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert "--api-key-file" not in opened and opened["--api-key-env"] == ""
    err = capsys.readouterr().err
    assert str(key_file) in err and "warning: no API key" in err
    args = build_parser().parse_args(["serve", str(tmp_path), "--no-api-key", "--api-key-file", "/k"])
    with pytest.raises(SystemExit, match="contradict"):
        args.func(args)
    probe.saw(
        f"--api-key-file {key_file.name} (0600) by default; open only with --no-api-key, with a warning"
    )


def test_docs_are_served_only_when_asked_and_behind_the_key():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from slmops.predictor.guard import Guard
    from slmops.predictor.server import enable_docs

    codes = {}
    for docs in (False, True):
        app = FastAPI(docs_url=None, redoc_url=None)
        if docs:
            enable_docs(app)
        app.add_middleware(Guard, api_key=KEY, max_body_bytes=1000, docs=docs)
        with TestClient(app) as client:
            codes[docs] = [client.get(p, headers=AUTH).status_code for p in ("/docs", "/openapi.json")]
            assert client.get("/openapi.json").status_code == 401
    assert codes == {False: [404, 404], True: [200, 200]}
