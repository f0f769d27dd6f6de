"""gRPC authentication and Ray isolation in the Helm chart and the kustomize manifests.

The chart renders with the real helm (see test_charts.py); the TLS probe it
writes is run against a real in-process server with the credentials laid out
as the rendered mounts would lay them out.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from slmops.api.v1 import training_pb2, training_pb2_grpc
from slmops.core import health_probe
from slmops.core.server import Registration, start_server
from tests.unit._charts import (
    ROOT,
    SERVICES,
    check,
    container_env,
    find,
    one,
    reachable,
    selects,
)

RELEASE_NS = "slmops"
RAY_PORTS = (6379, 8265, 10001, 8080)  # GCS, dashboard and Jobs API, client, metrics
MOUNTS = "/var/run/slmops"
TOKEN_FILE = f"{MOUNTS}/auth/token"
TLS_ENV = (
    "SLMOPS_TLS_CERT_FILE",
    "SLMOPS_TLS_KEY_FILE",
    "SLMOPS_TLS_CA_FILE",
    "SLMOPS_TLS_CLIENT_CA_FILE",
    "SLMOPS_TLS_CLIENT_CERT_FILE",
    "SLMOPS_TLS_CLIENT_KEY_FILE",
    "SLMOPS_TLS_SERVER_NAME",
)
MTLS = ["grpcAuth.tls.existingSecret=slmops-tls", "grpcAuth.tls.requireClientCert=true"]


@pytest.fixture(scope="module")
def default_docs(helm) -> list[dict[str, Any]]:
    return check.helm_template()


@pytest.fixture(scope="module")
def mtls_docs(helm) -> list[dict[str, Any]]:
    return check.helm_template(set_values=MTLS)


def _pod(docs: list[dict], svc: str) -> dict:
    return one(docs, "Deployment", f"slmops-{svc}")["spec"]["template"]["spec"]


def _mounts(pod: dict) -> dict[str, dict]:
    return {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}


def _volumes(pod: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod["volumes"]}


def _mounted_secret_file(pod: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the read-only Secret volume that puts a file at path."""
    for name, mount in _mounts(pod).items():
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder):
            assert mount.get("readOnly") is True, name
            secret = _volumes(pod)[name]["secret"]
            filename = path[len(folder) :]
            items = secret.get("items")
            if items is None:
                return secret["secretName"], filename
            (key,) = [i["key"] for i in items if i["path"] == filename]
            return secret["secretName"], key
    raise AssertionError(f"nothing mounted at {path}")


# --- the bearer token --------------------------------------------------------


def test_every_service_requires_the_token_from_a_mounted_secret(default_docs):
    secret = one(default_docs, "Secret", "slmops-grpc-auth")
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for svc in SERVICES:
        pod = _pod(default_docs, svc)
        env = container_env(pod["containers"][0])
        assert env["SLMOPS_AUTH_TOKEN_FILE"] == TOKEN_FILE, svc
        assert _mounted_secret_file(pod, TOKEN_FILE) == ("slmops-grpc-auth", "token"), svc
        assert _volumes(pod)["grpc-auth"]["secret"]["defaultMode"] == 0o440
        assert not set(TLS_ENV) & env.keys(), svc  # plain text by default
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" in pod["containers"][0][probe], (svc, probe)  # health stays open
    # The token never travels as an environment value.
    for doc in default_docs:
        for container in (doc.get("spec") or {}).get("template", {}).get("spec", {}).get("containers", []):
            for entry in container.get("env", []):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
                assert ref.get("name") != "slmops-grpc-auth", container["name"]


def test_an_existing_token_secret_is_mounted_and_none_is_made(helm):
    docs = check.helm_template(set_values=["grpcAuth.token.existingSecret=my-token"])
    assert not find(docs, "Secret", "slmops-grpc-auth")
    for svc in SERVICES:
        assert _mounted_secret_file(_pod(docs, svc), TOKEN_FILE) == ("my-token", "token")


def test_without_the_token_no_service_reads_one(helm):
    docs = check.helm_template(set_values=["grpcAuth.token.enabled=false"])
    assert not find(docs, "Secret", "slmops-grpc-auth")
    for svc in SERVICES:
        pod = _pod(docs, svc)
        assert "SLMOPS_AUTH_TOKEN_FILE" not in container_env(pod["containers"][0]), svc
        assert "grpc-auth" not in _volumes(pod) and "grpc-auth" not in _mounts(pod), svc


# --- TLS and mutual TLS ------------------------------------------------------


def test_tls_with_client_certificates_mounts_the_secret_and_names_every_file(mtls_docs, kubernetes_validate):
    assert check.validate_manifests(mtls_docs) == []
    for svc, port in SERVICES.items():
        pod = _pod(mtls_docs, svc)
        container = pod["containers"][0]
        env = container_env(container)
        assert {name: env.get(name) for name in TLS_ENV} == {
            "SLMOPS_TLS_CERT_FILE": f"{MOUNTS}/tls/tls.crt",
            "SLMOPS_TLS_KEY_FILE": f"{MOUNTS}/tls/tls.key",
            "SLMOPS_TLS_CA_FILE": f"{MOUNTS}/tls/ca.crt",
            "SLMOPS_TLS_CLIENT_CA_FILE": f"{MOUNTS}/tls/ca.crt",
            "SLMOPS_TLS_CLIENT_CERT_FILE": f"{MOUNTS}/tls/tls.crt",  # the same certificate, in-release calls
            "SLMOPS_TLS_CLIENT_KEY_FILE": f"{MOUNTS}/tls/tls.key",
            "SLMOPS_TLS_SERVER_NAME": None,  # the certificate names the service addresses
        }, svc
        for name in TLS_ENV[:-1]:
            assert _mounted_secret_file(pod, env[name]) == ("slmops-tls", env[name].rsplit("/", 1)[1])
        assert env["SLMOPS_AUTH_TOKEN_FILE"] == TOKEN_FILE  # the token stays on
        # The kubelet's grpc probe cannot speak TLS: the container probes itself.
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in container[probe], (svc, probe)
            assert container[probe]["exec"]["command"] == [
                "python", "-m", "slmops.core.health_probe",
                "--port", str(port), "--server-name", f"slmops-{svc}.{RELEASE_NS}.svc",
            ]  # fmt: skip
            assert container[probe]["timeoutSeconds"] >= 5


def test_tls_options_a_client_certificate_public_roots_and_a_server_name(helm):
    docs = check.helm_template(
        set_values=[
            "grpcAuth.tls.existingSecret=slmops-tls",
            "grpcAuth.tls.useSecretCA=false",
            "grpcAuth.tls.serverName=grpc.example.com",
        ]
    )
    env = container_env(_pod(docs, "pipeline")["containers"][0])
    assert env["SLMOPS_TLS_CERT_FILE"] == f"{MOUNTS}/tls/tls.crt"
    assert env["SLMOPS_TLS_SERVER_NAME"] == "grpc.example.com"
    for name in ("SLMOPS_TLS_CA_FILE", "SLMOPS_TLS_CLIENT_CA_FILE", "SLMOPS_TLS_CLIENT_CERT_FILE"):
        assert name not in env  # system roots, no client certificates

    docs = check.helm_template(values_files=[check.MTLS_VALUES])
    pod = _pod(docs, "pipeline")
    env = container_env(pod["containers"][0])
    assert _mounted_secret_file(pod, env["SLMOPS_TLS_CLIENT_CERT_FILE"]) == ("slmops-grpc-client", "tls.crt")
    assert _mounted_secret_file(pod, env["SLMOPS_TLS_CLIENT_KEY_FILE"]) == ("slmops-grpc-client", "tls.key")
    assert _mounted_secret_file(pod, env["SLMOPS_TLS_CLIENT_CA_FILE"]) == ("slmops-grpc-tls", "ca.crt")
    assert _mounted_secret_file(pod, TOKEN_FILE) == ("slmops-grpc-token", "token")


def test_mtls_values_lint(helm):
    assert check.helm_lint([check.MTLS_VALUES]) == []


@pytest.fixture
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")


def _certificates(server_names: list[str]) -> dict[str, bytes]:
    """PEM: a CA, a certificate naming server_names (no key usage limits, so it can be a client's
    too) and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slmops chart test CA")])

    def build(subject: x509.Name, key: Any, serial: int) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))  # fmt: skip

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())  # fmt: skip

    ca = build(ca_name, ca_key, 1).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    )
    out = {"ca": ca.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)}
    for role, serial in (("server", 2), ("client", 3)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]), key, serial)
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in server_names]), critical=False
            )
        out[role] = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        out[f"{role}_key"] = pem_key(key)
    return out


def _lay_out_secrets(pod: dict, root: Path, secrets: dict[str, dict[str, bytes]]) -> None:
    """Write each Secret volume's files under root as the kubelet would under its mount path."""
    volumes = _volumes(pod)
    for name, mount in _mounts(pod).items():
        secret = volumes[name].get("secret")
        if secret is None:
            continue
        data = secrets[secret["secretName"]]
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        items = secret.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (folder / item["path"]).write_bytes(data[item["key"]])


@pytest.mark.parametrize(
    "values", [[check.STORE_VALUES], [check.MTLS_VALUES]], ids=["own-certificate", "client-secret"]
)
async def test_the_rendered_tls_probe_passes_only_with_the_rendered_credentials(
    helm, tmp_path, monkeypatch, values
):
    svc, port = "training", SERVICES["training"]
    docs = await asyncio.to_thread(
        check.helm_template, values, MTLS if values == [check.STORE_VALUES] else []
    )
    pod = _pod(docs, svc)
    pem = _certificates([f"slmops-{svc}.{RELEASE_NS}.svc"])
    tls = {"tls.crt": pem["server"], "tls.key": pem["server_key"], "ca.crt": pem["ca"]}
    client = {"tls.crt": pem["client"], "tls.key": pem["client_key"], "ca.crt": pem["ca"]}
    token = {"token": b"s3cret-token\n"}
    _lay_out_secrets(pod, tmp_path, {"slmops-tls": tls, "slmops-grpc-tls": tls, "slmops-grpc-client": client,
                                     "slmops-grpc-auth": token, "slmops-grpc-token": token,
                                     "slmops-ray": {"auth_token": b"ray-token"}})  # fmt: skip
    env = container_env(pod["containers"][0])
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    for name in (*TLS_ENV, "SLMOPS_AUTH_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
        if name in env:
            monkeypatch.setenv(name, str(tmp_path / env[name].lstrip("/")))

    registration = Registration(
        training_pb2_grpc.add_TrainingServiceServicer_to_server,
        training_pb2_grpc.TrainingServiceServicer(),
        training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    )
    server = await start_server("test", [registration])
    try:
        command = pod["containers"][0]["readinessProbe"]["exec"]["command"]
        assert command[:3] == ["python", "-m", "slmops.core.health_probe"]
        args = [str(server.port) if a == str(port) else a for a in command[3:]] + ["--timeout", "3"]
        assert await asyncio.to_thread(health_probe.main, args) == 0
        # It can fail: another name than the certificate's, no client certificate.
        wrong = [a if "svc" not in a else "slmops-other.slmops.svc" for a in args]
        assert await asyncio.to_thread(health_probe.main, wrong) == 1
        monkeypatch.delenv("SLMOPS_TLS_CLIENT_CERT_FILE")
        monkeypatch.delenv("SLMOPS_TLS_CLIENT_KEY_FILE")
        assert await asyncio.to_thread(health_probe.main, args) == 1
    finally:
        await server.stop(0)


# --- Ray and NetworkPolicies -------------------------------------------------


def _pods(docs: list[dict]) -> dict[str, dict]:
    """The release's pods as the NetworkPolicies see them (KubeRay adds its own labels)."""

    def labels(template: dict) -> dict[str, str]:
        return template["metadata"]["labels"]

    deployments = {svc: one(docs, "Deployment", f"slmops-{svc}") for svc in SERVICES}
    pods = {
        svc: {"namespace": RELEASE_NS, "labels": labels(d["spec"]["template"])}
        for svc, d in deployments.items()
    }
    ray = one(docs, "RayCluster", "slmops-ray")["spec"]
    kuberay = {"ray.io/cluster": "slmops-ray"}
    head, worker = ray["headGroupSpec"]["template"], ray["workerGroupSpecs"][0]["template"]
    pods["ray-head"] = {"namespace": RELEASE_NS, "labels": {**labels(head), **kuberay}}
    pods["ray-worker"] = {"namespace": RELEASE_NS, "labels": {**labels(worker), **kuberay}}
    return pods


OUTSIDERS = {
    "another namespace": {"namespace": "default", "labels": {"app": "curious"}},
    "this namespace, not the release": {"namespace": RELEASE_NS, "labels": {"app": "curious"}},
    "another release": {"namespace": RELEASE_NS, "labels": {"app.kubernetes.io/instance": "other",
                                                             "app.kubernetes.io/part-of": "slmops"}},
}  # fmt: skip


RAY_TOKEN_FILE = f"{MOUNTS}/ray/token"


def test_ray_auth_is_on_and_only_release_pods_reach_the_ray_head(default_docs):
    # KubeRay generates the token: Secret <RayCluster name>, key auth_token, and sets
    # RAY_AUTH_MODE/RAY_AUTH_TOKEN on head, workers and the autoscaler itself.
    ray = one(default_docs, "RayCluster", "slmops-ray")
    assert ray["spec"]["authOptions"] == {"mode": "token"}
    assert not find(default_docs, "Secret", "slmops-ray")  # nothing random in the chart
    for svc in SERVICES:
        pod = _pod(default_docs, svc)
        env = container_env(pod["containers"][0])
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN_PATH"] == RAY_TOKEN_FILE and "RAY_AUTH_TOKEN" not in env
        assert _mounted_secret_file(pod, RAY_TOKEN_FILE) == (ray["metadata"]["name"], "auth_token")
    for group in [ray["spec"]["headGroupSpec"], *ray["spec"]["workerGroupSpecs"]]:
        env = container_env(group["template"]["spec"]["containers"][0])
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & env.keys()

    policies = find(default_docs, "NetworkPolicy")
    pods = _pods(default_docs)
    head = pods["ray-head"]
    assert any(selects(p["spec"]["podSelector"], head["labels"]) for p in policies)
    for port in RAY_PORTS:
        for name, outsider in OUTSIDERS.items():
            assert not reachable(policies, head, outsider, port), (name, port)
        for inside in ("pipeline", "training", "ray-worker"):
            assert reachable(policies, head, pods[inside], port), (inside, port)
    for name, outsider in OUTSIDERS.items():
        assert not reachable(policies, pods["ray-worker"], outsider, 10001), name


def test_grpc_ports_stay_open_to_release_pods_and_allowed_clients(helm, tmp_path):
    values = tmp_path / "values.yaml"
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-ingress"}}}
    values.write_text(yaml.safe_dump({"networkPolicy": {"allowedClients": [gateway]}}))
    docs = check.helm_template([check.STORE_VALUES, values])
    policies = find(docs, "NetworkPolicy")
    pods = _pods(docs)
    client = {"namespace": "istio-ingress", "labels": {"app": "istio-ingressgateway"}}
    for svc, port in SERVICES.items():
        target = pods[svc]
        assert reachable(policies, target, pods["pipeline"], port), svc
        assert reachable(policies, target, client, port), svc
        assert not reachable(policies, target, OUTSIDERS["another namespace"], port), svc
        assert not reachable(policies, target, client, port + 1000), svc  # only the gRPC port
    for port in RAY_PORTS:
        assert not reachable(policies, pods["ray-head"], client, port), port  # clients of gRPC, not of Ray


@pytest.mark.parametrize(
    "set_values,message",
    [
        (["grpcAuth.tls.requireClientCert=true"], "requireClientCert needs grpcAuth.tls.existingSecret"),
        (["ray.create=false", "ray.address=http://ray.example:8265"], "needs ray.auth.existingSecret"),
        (["grpcAuth.tls.clientCA=ca"], "additional properties 'clientCA' not allowed"),
    ],
)
def test_auth_values_that_cannot_work_fail_with_a_message(helm, set_values, message):
    with pytest.raises(check.ToolError, match=message):
        check.helm_template(set_values=set_values)


def test_an_external_ray_cluster_without_token_auth(helm):
    docs = check.helm_template(
        set_values=["ray.create=false", "ray.address=http://ray.example:8265", "ray.auth.enabled=false"]
    )
    env = container_env(_pod(docs, "training")["containers"][0])
    assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN_PATH" not in env
    assert "ray-auth" not in _volumes(_pod(docs, "training"))


# --- NOTES -------------------------------------------------------------------


def _notes(helm: Path, *set_values: str) -> str:
    cmd = [str(helm), "install", "slmops", str(check.CHART), "-n", RELEASE_NS, "--dry-run=client"]
    cmd += ["-f", str(check.STORE_VALUES)]
    for item in set_values:
        cmd += ["--set", item]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split("NOTES:", 1)[1]


def test_notes_tell_how_to_read_the_token_and_the_ca(helm):
    default = _notes(helm)
    read = (
        "kubectl -n slmops get secret slmops-grpc-auth -o jsonpath='{.data.token}' | base64 -d > slmops.token"
    )
    assert read in default
    assert "export SLMOPS_AUTH_TOKEN_FILE=$PWD/slmops.token" in default
    assert "SLMOPS_TLS" not in default and "grpcAuth.token.enabled is false" not in default
    mtls = _notes(helm, *MTLS)
    assert "get secret slmops-tls -o jsonpath='{.data.ca\\.crt}' | base64 -d > slmops-ca.crt" in mtls
    assert "export SLMOPS_TLS_SERVER_NAME=slmops-pipeline.slmops.svc" in mtls
    assert "SLMOPS_TLS_CLIENT_CERT_FILE" in mtls
    open_install = _notes(helm, "grpcAuth.token.enabled=false", "networkPolicy.enabled=false")
    assert "slmops.token" not in open_install
    assert "WARNING: grpcAuth.token.enabled is false" in open_install
    assert "WARNING: networkPolicy.enabled is false" in open_install


# --- kustomize ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kustomize_services_read_the_token_from_the_documented_secret(overlay):
    docs = check.kustomize_build(check.K8S / "overlays" / overlay)
    for svc in SERVICES:
        pod = _pod(docs, svc)
        assert container_env(pod["containers"][0])["SLMOPS_AUTH_TOKEN_FILE"] == TOKEN_FILE, svc
        assert _mounted_secret_file(pod, TOKEN_FILE) == ("slmops-grpc-auth", "token"), svc
    assert not find(docs, "Secret")  # created out of band, never committed
    namespace = one(docs, "Namespace", {"dev": "slmops-dev", "prod": "slmops"}[overlay])["metadata"]["name"]
    made = f"kubectl -n {namespace} create secret generic slmops-grpc-auth --from-literal=token="
    assert made in (check.K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    assert "slmops-grpc-auth" in (ROOT / "k8s" / "README.md").read_text()
