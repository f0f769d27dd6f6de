"""Bearer token, TLS and mutual TLS on a real in-process gRPC server, called through core/clients.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.api.v1 import common_pb2, training_pb2, training_pb2_grpc
from slmops.core import auth, clients
from slmops.core.errors import NotFound
from slmops.core.server import Registration, start_server


class Servicer(training_pb2_grpc.TrainingServiceServicer):
    async def GetTrainingJob(self, request, context):
        raise NotFound("job", request.id)

    async def WatchTrainingJob(self, request, context):
        yield common_pb2.ProgressEvent(job_id=request.id, sequence=1)


async def _start():
    name = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
    return await start_server("test", [Registration(training_pb2_grpc.add_TrainingServiceServicer_to_server,
                                                    Servicer(), name)])  # fmt: skip


def _get(channel: grpc.Channel, job_id: str = "x") -> grpc.StatusCode:
    try:
        training_pb2_grpc.TrainingServiceStub(channel).GetTrainingJob(
            common_pb2.GetJobRequest(id=job_id), timeout=5
        )
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _watch(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        list(
            training_pb2_grpc.TrainingServiceStub(channel).WatchTrainingJob(
                common_pb2.WatchJobRequest(id="x"), timeout=5
            )
        )
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def token_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    path = auth.ensure_token_file(tmp_path / "token")
    monkeypatch.setenv("SLMOPS_AUTH_TOKEN_FILE", str(path))
    return path


@pytest.mark.reliability("a gRPC call without the token", expected="UNAUTHENTICATED; health stays open")
async def test_calls_without_the_token_are_unauthenticated_and_health_stays_open(token_file, monkeypatch):
    server = await _start()
    addr = f"127.0.0.1:{server.port}"
    try:
        plain = grpc.insecure_channel(addr)
        assert await asyncio.to_thread(_get, plain) == grpc.StatusCode.UNAUTHENTICATED
        assert await asyncio.to_thread(_watch, plain) == grpc.StatusCode.UNAUTHENTICATED
        wrong = grpc.intercept_channel(grpc.insecure_channel(addr), clients._Token("not-the-token"))
        assert await asyncio.to_thread(_get, wrong) == grpc.StatusCode.UNAUTHENTICATED
        check = health_pb2_grpc.HealthStub(plain).Check
        reply = await asyncio.to_thread(check, health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        good = clients.channel(addr)  # reads SLMOPS_AUTH_TOKEN_FILE
        assert await asyncio.to_thread(_get, good) == grpc.StatusCode.NOT_FOUND  # past the check
        assert await asyncio.to_thread(_watch, good) == grpc.StatusCode.OK
        for channel in (plain, wrong, good):
            channel.close()
    finally:
        await server.stop(0)


def test_the_token_file_is_private_random_and_kept(tmp_path, monkeypatch):
    path = auth.ensure_token_file(tmp_path / "auth" / "token")
    first = path.read_text()
    assert len(first) >= 40 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.ensure_token_file(path).read_text() == first
    assert auth.ensure_token_file(tmp_path / "other").read_text() != first
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLMOPS_AUTH_TOKEN_FILE", raising=False)
    assert auth.server_token() == ""  # servers require a token only when configured
    assert auth.client_token() == first  # clients find the local stack's
    monkeypatch.setenv("SLMOPS_AUTH_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(auth.AuthConfigError, match="cannot be read"):
        auth.server_token()


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slmops test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, serial in (("server", 2), ("client", 3)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))  # fmt: skip
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        files[role] = folder / f"{role}.pem"
        files[role].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = folder / f"{role}-key.pem"
        files[f"{role}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))  # fmt: skip
    return files


async def test_tls_and_mutual_tls(tmp_path, monkeypatch):
    files = _certificates(tmp_path)
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_TLS_CERT_FILE", str(files["server"]))
    monkeypatch.setenv("SLMOPS_TLS_KEY_FILE", str(files["server_key"]))
    monkeypatch.setenv("SLMOPS_TLS_CA_FILE", str(files["ca"]))
    server = await _start()
    addr = f"localhost:{server.port}"
    try:
        assert await asyncio.to_thread(_get, clients.channel(addr)) == grpc.StatusCode.NOT_FOUND
        assert await asyncio.to_thread(_get, grpc.insecure_channel(addr)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)

    monkeypatch.setenv("SLMOPS_TLS_CLIENT_CA_FILE", str(files["ca"]))  # now client certificates are required
    server = await _start()
    addr = f"localhost:{server.port}"
    try:
        assert await asyncio.to_thread(_get, clients.channel(addr)) == grpc.StatusCode.UNAVAILABLE
        monkeypatch.setenv("SLMOPS_TLS_CLIENT_CERT_FILE", str(files["client"]))
        monkeypatch.setenv("SLMOPS_TLS_CLIENT_KEY_FILE", str(files["client_key"]))
        assert await asyncio.to_thread(_get, clients.channel(addr)) == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
