"""Where jobs may send secrets and requests: secrets only to their hosts, no link-local or metadata
addresses (by name or by what a name resolves to), upstream error text cut short, and the platform's
predictor key only to the platform's own deployments.

Everything listens on loopback. Made-up names (`teacher.test`, `metadata.test`) are given addresses by
a stand-in resolver (socket.getaddrinfo), so a refused request would have reached a loopback listener
that counts every connection it accepts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from slmops.api.v1 import evaluation_pb2, synthesis_pb2, synthesis_pb2_grpc
from slmops.core import egress
from slmops.core.endpoints import is_platform_url, resolve_api_key
from slmops.core.errors import InvalidSpec, Unavailable
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.core.spec_checks import SamplingConfig
from slmops.evaluation import job as evaluation_job
from slmops.evaluation.client import Example, TargetClient, measure_target, scrape_memory
from slmops.evaluation.config import TargetConfig
from slmops.evaluation.spec import from_proto as evaluation_spec
from slmops.synthesis.config import EndpointTeacherConfig
from slmops.synthesis.endpoint_teacher import EndpointTeacher
from slmops.synthesis.endpoint_teacher import probe as probe_teacher
from slmops.synthesis.service import registration
from slmops.synthesis.spec import from_proto as synthesis_spec
from slmops.testing.standin import StandinServer
from tests.unit._fakes import FakeRay

SETTINGS = ("SLMOPS_ALLOWED_ROOTS", "SLMOPS_ARTIFACT_ROOT", "SLMOPS_ALLOWED_SECRET_ENV", "SLMOPS_SECRET_HOSTS",
            "SLMOPS_PLAIN_HTTP_HOSTS", "SLMOPS_EGRESS_ALLOW", "SLMOPS_PREDICTOR_API_KEY_FILE",
            "SLMOPS_KSERVE_NAMESPACE", "KUBERNETES_SERVICE_HOST", "OTEL_EXPORTER_OTLP_ENDPOINT")  # fmt: skip
MARKER = "UPSTREAM-BODY-MARKER"


class Listener:
    """A loopback HTTP server that counts the connections it accepts and records each request
    (method, path, Authorization); it answers every request with `status` and `body`."""

    def __init__(self, status: int = 500, body: bytes = b'{"error": {"message": "no"}}'):
        self.status, self.body = status, body
        self.connections = 0
        self.requests: list[tuple[str, str, str]] = []
        listener = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                listener.connections += 1
                return True

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                listener.requests.append((self.command, self.path, self.headers.get("Authorization") or ""))
                self.send_response(listener.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(listener.body)))
                self.end_headers()
                self.wfile.write(listener.body)

            do_GET = do_POST = _answer

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str = "127.0.0.1", path: str = "/v1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n")
    return tmp_path


@pytest.fixture
def listener(data_dir):
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def standin():
    with StandinServer() as server:
        server.port = int(server.origin.rsplit(":", 1)[1])
        yield server


def fake_names(monkeypatch, names: dict[str, list[str]]) -> list[str]:
    """Resolve each made-up name to its addresses; other names as before. Returns the names looked up."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in names:
            return real(host, port, *args, **kwargs)
        asked.append(name)
        number = int(port or 0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, number, 0, 0)) if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, number)) for ip in names[name]]  # fmt: skip

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def synthesis(data_dir, base_url: str, api_key_env: str = "") -> synthesis_pb2.SynthesisSpec:
    return synthesis_pb2.SynthesisSpec(
        prompts_uri=str(data_dir / "prompts.jsonl"),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url=base_url, model="m", api_key_env=api_key_env),
    )


def teacher(base_url: str, api_key_env: str = "", **more: Any) -> EndpointTeacherConfig:
    fields = {"backoff_s": 0.001, "max_attempts": 2, "timeout_s": 5.0, **more}
    return EndpointTeacherConfig(base_url=base_url, model="m", api_key_env=api_key_env, **fields)


def refused_at_create(spec: Any) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        synthesis_spec(spec)
    return dict(info.value.problems)


@pytest.fixture
async def synthesis_stub(data_dir):
    jobs = StageJobs("synthesis", JobStore(f"sqlite:///{data_dir}/jobs.sqlite"), FakeRay(), poll_s=0.05)
    running = await start_server("synthesis-egress-test", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield synthesis_pb2_grpc.SynthesisServiceStub(channel)
    await channel.close()
    await running.stop(0)
    await jobs.close()


async def create_error(stub: Any, spec: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateSynthesisJob(synthesis_pb2.CreateSynthesisJobRequest(spec=spec))
    return info.value


@pytest.mark.reliability(
    "a request names the platform's own SLMOPS_PREDICTOR_API_KEY as its teacher's api_key_env",
    expected="INVALID_ARGUMENT naming spec.endpoint.api_key_env; the job refuses it too; nothing sent",
)
async def test_the_platform_key_is_never_a_request_secret(
    probe, data_dir, listener, synthesis_stub, monkeypatch
):
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY", "platform-key-0123")
    spec = synthesis(data_dir, listener.url(), "SLMOPS_PREDICTOR_API_KEY")
    error = await create_error(synthesis_stub, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("spec.endpoint.api_key_env: ") and "platform-key" not in error.details()
    with pytest.raises(InvalidSpec, match="platform's own credentials"):  # a config that reaches a job anyway
        probe_teacher(teacher(listener.url(), "SLMOPS_PREDICTOR_API_KEY"))
    with pytest.raises(InvalidSpec):
        EndpointTeacher(teacher(listener.url(), "SLMOPS_PREDICTOR_API_KEY"), SamplingConfig())
    assert listener.connections == 0
    probe.saw(f"{error.code().name} naming spec.endpoint.api_key_env; job refused; "
              f"{listener.connections} connections")  # fmt: skip


@pytest.mark.reliability(
    "TEACHER_API_KEY is sent to a host it is not allowed to reach",
    expected="INVALID_ARGUMENT naming api_key_env at Create and a refusal in the job; the listener sees nothing",
)
@pytest.mark.parametrize(
    ("secret_hosts", "host"),
    [
        ("TEACHER_API_KEY=api.example.com", "127.0.0.1"),  # its listed host only, not loopback
        ("TEACHER_API_KEY=api.example.com", "teacher.test"),  # another name (resolving to the listener)
        ("", "teacher.test"),  # an unlisted name goes to loopback hosts only
    ],
    ids=["listed-elsewhere-loopback", "listed-elsewhere-name", "unlisted-name"],
)
async def test_a_secret_goes_only_to_its_hosts(probe, data_dir, listener, synthesis_stub, monkeypatch,
                                               secret_hosts, host):  # fmt: skip
    monkeypatch.setenv("SLMOPS_SECRET_HOSTS", secret_hosts)
    monkeypatch.setenv("TEACHER_API_KEY", "teacher-secret-0123")
    fake_names(monkeypatch, {"teacher.test": ["127.0.0.1"]})
    url = listener.url(host)
    error = await create_error(synthesis_stub, synthesis(data_dir, url, "TEACHER_API_KEY"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()
    assert details.startswith("spec.endpoint.api_key_env: ") and "SLMOPS_SECRET_HOSTS" in details
    with pytest.raises(InvalidSpec, match="TEACHER_API_KEY may be sent"):
        probe_teacher(teacher(url, "TEACHER_API_KEY"))
    with pytest.raises(InvalidSpec):
        TargetClient(
            TargetConfig(name="t", base_url=url, model="m", api_key_env="TEACHER_API_KEY"), SamplingConfig()
        )
    assert listener.connections == 0 and "teacher-secret" not in details
    probe.saw(f"{error.code().name}: {details[len('spec.endpoint.api_key_env: '):][:90]}...; "
              f"{listener.connections} connections")  # fmt: skip


@pytest.mark.reliability(
    "a teacher's key would travel over plain http:// to a host that is not loopback",
    expected="refused at Create and in the job unless the host is in SLMOPS_PLAIN_HTTP_HOSTS",
)
def test_plain_http_carries_a_secret_to_loopback_only(probe, data_dir, standin, monkeypatch):
    monkeypatch.setenv("SLMOPS_SECRET_HOSTS", "TEACHER_API_KEY=teacher.test")
    monkeypatch.setenv("TEACHER_API_KEY", "teacher-secret-0123")
    fake_names(monkeypatch, {"teacher.test": ["127.0.0.1"]})
    url = f"http://teacher.test:{standin.port}/v1"
    problem = refused_at_create(synthesis(data_dir, url, "TEACHER_API_KEY"))["spec.endpoint.api_key_env"]
    assert "http://" in problem and "SLMOPS_PLAIN_HTTP_HOSTS" in problem
    standin.requests.clear()
    with pytest.raises(InvalidSpec, match="unencrypted"):
        EndpointTeacher(teacher(url, "TEACHER_API_KEY"), SamplingConfig(max_tokens=4))
    assert standin.requests == []
    monkeypatch.setenv("SLMOPS_PLAIN_HTTP_HOSTS", "teacher.test")  # the operator's exception
    synthesis_spec(synthesis(data_dir, url, "TEACHER_API_KEY"))
    [answer] = EndpointTeacher(teacher(url, "TEACHER_API_KEY"), SamplingConfig(max_tokens=4)).generate(
        ["1+1="]
    )
    assert (
        answer["completion"] == "2" and standin.requests[-1]["authorization"] == "Bearer teacher-secret-0123"
    )
    probe.saw("refused without SLMOPS_PLAIN_HTTP_HOSTS (no request); sent once the host is listed")


@pytest.mark.reliability(
    "a teacher, target or judge base_url names a link-local or cloud metadata address",
    expected="INVALID_ARGUMENT naming the base_url at Create",
)
async def test_metadata_addresses_are_refused_at_create(probe, data_dir, synthesis_stub):
    start = time.perf_counter()
    error = await create_error(synthesis_stub, synthesis(data_dir, "http://169.254.169.254/latest/meta-data"))
    elapsed = time.perf_counter() - start
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("spec.endpoint.base_url: ") and "metadata" in error.details()
    forms = ["http://[fd00:ec2::254]/v1", "http://100.100.100.200/v1", "http://metadata.google.internal/v1",
             "http://[::ffff:169.254.169.254]/v1", "http://2852039166/v1", "http://169.254.1.1:8080/v1",
             "http://[fe80::1]/v1"]  # fmt: skip
    for url in forms:
        assert "spec.endpoint.base_url" in refused_at_create(synthesis(data_dir, url)), url
    spec = evaluation_pb2.EvaluationSpec(
        dataset_uri=str(data_dir / "prompts.jsonl"),
        targets=[evaluation_pb2.EvalTarget(name="t", base_url="http://169.254.169.254/v1", model="m")],
        judge=evaluation_pb2.JudgeSpec(base_url="http://metadata.google.internal/v1", model="j"),
    )
    with pytest.raises(InvalidSpec) as info:
        evaluation_spec(spec)
    assert {"spec.targets[0].base_url", "spec.judge.base_url"} <= set(dict(info.value.problems))
    probe.saw(f"{error.code().name} naming spec.endpoint.base_url in {elapsed:.2f} s; "
              f"{len(forms)} other spellings and the evaluation's target and judge refused too")  # fmt: skip


@pytest.mark.reliability(
    "a teacher or target host name resolves to 169.254.169.254 (with a loopback address beside it)",
    expected="refused when the job connects; no connection is made, no retry",
)
def test_a_name_resolving_to_metadata_is_refused_at_connect_time(probe, data_dir, listener, monkeypatch):
    asked = fake_names(monkeypatch, {"metadata.test": ["127.0.0.1", "169.254.169.254"]})
    url = listener.url("metadata.test")
    synthesis_spec(synthesis(data_dir, url))  # a name cannot be judged at Create without a lookup
    start = time.perf_counter()
    with pytest.raises(egress.EgressRefused, match="169.254.169.254"):
        probe_teacher(teacher(url))
    [result] = EndpointTeacher(teacher(url, max_attempts=5), SamplingConfig()).generate(["1+1="])
    assert result["error"].startswith("EgressRefused") and result["attempts"] == 1
    with pytest.raises(egress.EgressRefused):  # the evaluation job marks the target failed with this reason
        measure_target(
            TargetConfig(name="t", base_url=url, model="m"), [Example("1+1=", "2")], SamplingConfig()
        )
    memory, note = scrape_memory(url)
    elapsed = time.perf_counter() - start
    assert memory == 0 and "EgressRefused" in note
    assert asked and listener.connections == 0 and listener.requests == []
    probe.saw(f"EgressRefused in the probe, the teacher (1 attempt), the target and /metrics in {elapsed:.2f} s; "
              f"{listener.connections} connections")  # fmt: skip


@pytest.mark.reliability(
    "a target answers HTTP 500 with a 1 MB body",
    expected="the job's message and progress stay under 500 characters, quoting at most the body's first 200",
)
def test_a_large_error_body_is_cut_out_of_job_records(probe, data_dir, monkeypatch):
    body = ("x" * 1000 + MARKER + "y" * 1_048_576).encode()  # a server may quote a little of it, no more
    server = Listener(500, body)
    try:
        messages: list[str] = []
        config = {
            "dataset_uri": str(data_dir / "prompts.jsonl"),
            "targets": [{"name": "t", "base_url": server.url(), "model": "m"}],
            "quality_metrics": ["rouge_l"],
        }
        with pytest.raises(Unavailable) as info:
            evaluation_job.run(config, str(data_dir / "report"), lambda f, m, **kw: messages.append(m))
        recorded = f"{type(info.value).__name__}: {info.value}"
        [result] = EndpointTeacher(teacher(server.url(), max_attempts=1), SamplingConfig()).generate(["1+1="])
    finally:
        server.close()
    assert server.requests, "the target was asked"
    assert "HTTP 500" in recorded and len(recorded) < 500 and MARKER not in recorded
    assert all(len(m) < 500 and MARKER not in m for m in messages)
    assert "HTTP 500" in result["error"] and len(result["error"]) < 300 and MARKER not in result["error"]
    probe.saw(f"job message {len(recorded)} chars, longest progress {max(map(len, messages))} chars, "
              f"teacher reject reason {len(result['error'])} chars; nothing past the body's first 200 chars")  # fmt: skip


@pytest.mark.reliability(
    "synthesis or evaluation calls a deployment of the platform, or another host, naming no api_key_env",
    expected="the predictor key goes to loopback and in-cluster KServe hosts only; any other host gets none",
)
def test_the_predictor_key_goes_to_platform_deployments_only(probe, data_dir, standin, monkeypatch):
    key = "predictor-key-0123456789"
    (data_dir / "predictor-key").write_text(key + "\n")
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(data_dir / "predictor-key"))
    monkeypatch.setenv("SLMOPS_KSERVE_NAMESPACE", "slmops")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # as in a pod
    fake_names(monkeypatch, {"student-predictor.slmops.svc.cluster.local": ["127.0.0.1"],
                             "student-predictor.other.svc.cluster.local": ["127.0.0.1"],
                             "teacher.test": ["127.0.0.1"]})  # fmt: skip
    seen: dict[str, str] = {}
    for host in ("127.0.0.1", "student-predictor.slmops.svc.cluster.local",
                 "student-predictor.other.svc.cluster.local", "teacher.test"):  # fmt: skip
        url = f"http://{host}:{standin.port}/openai/v1"
        standin.requests.clear()
        [answer] = EndpointTeacher(teacher(url), SamplingConfig(max_tokens=4)).generate(["1+1="])
        TargetClient(TargetConfig(name="t", base_url=url, model="m"), SamplingConfig(max_tokens=4)).request(
            "2+2="
        )
        assert answer["completion"] == "2" and len(standin.requests) == 2
        sent = {r["authorization"] for r in standin.requests}
        assert len(sent) == 1, sent
        seen[host] = sent.pop()
    bearer = f"Bearer {key}"
    assert seen["127.0.0.1"] == bearer and seen["student-predictor.slmops.svc.cluster.local"] == bearer
    assert (
        seen["student-predictor.other.svc.cluster.local"] == "Bearer none"
        and seen["teacher.test"] == "Bearer none"
    )
    assert not is_platform_url("http://student.slmops.svc.cluster.local.example.com/v1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")  # outside a pod, anyone may answer such a name
    assert not is_platform_url(f"http://student-predictor.slmops.svc.cluster.local:{standin.port}/openai/v1")
    assert resolve_api_key("", "https://api.example.com/v1") == "none"
    probe.saw(
        "key sent to 127.0.0.1 and *.slmops.svc.cluster.local; 'none' to another namespace and to teacher.test"
    )


@pytest.mark.parametrize(
    ("allow", "host", "allowed"),
    [
        ("*", "api.example.com", True),
        ("*", "127.0.0.1", True),
        ("*", "169.254.169.254", False),
        ("*", "metadata.google.internal", False),
        ("169.254.169.254/32", "169.254.169.254", True),  # a CIDR may name a metadata address
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "example.com.evil.test", False),
        ("api.example.com, 10.0.0.0/8", "10.1.2.3", True),
        ("api.example.com, 10.0.0.0/8", "127.0.0.1", False),
        ("api.example.com", "other.example.com", False),
    ],
)
def test_the_egress_allow_list(monkeypatch, allow, host, allowed):
    monkeypatch.setenv("SLMOPS_EGRESS_ALLOW", allow)
    problem = egress.host_problem(host)
    assert (problem == "") is allowed, problem
    if not allowed:
        assert "SLMOPS_EGRESS_ALLOW" in problem or "metadata" in problem


def test_a_name_allowed_by_the_list_must_resolve_to_allowed_addresses(monkeypatch):
    monkeypatch.setenv("SLMOPS_EGRESS_ALLOW", "*.example.com")
    fake_names(monkeypatch, {"api.example.com": ["10.0.0.5"], "meta.example.com": ["169.254.169.254"]})
    assert [str(ip) for ip in egress.checked_addresses("api.example.com", 443)] == ["10.0.0.5"]
    with pytest.raises(egress.EgressRefused, match="link-local"):
        egress.checked_addresses("meta.example.com", 443)


def test_a_malformed_secret_hosts_setting_is_named(data_dir, monkeypatch):
    monkeypatch.setenv("SLMOPS_SECRET_HOSTS", "TEACHER_API_KEY")
    problem = refused_at_create(synthesis(data_dir, "http://127.0.0.1:1/v1", "TEACHER_API_KEY"))
    assert "SLMOPS_SECRET_HOSTS" in problem["spec.endpoint.api_key_env"]
