"""OIP v2 gRPC on the kserve backend: the ports its InferenceServices declare, held against KServe's CRD,
and the in-cluster gRPC address it reads back from their status."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from kubernetes import client as k8s

from slmops.serving.backends.kserve import KServeBackend
from slmops.serving.backends.kserve_status import PREDICTOR_GRPC_PORT, status_of
from tests.unit._kserve_emulator import NS, student_revision

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def check_charts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("check_charts")


def _build(mode: str) -> dict:
    backend = KServeBackend(k8s.ApiClient(), namespace=NS, runtime="slmops-predictor", deployment_mode=mode)
    return backend.build("support-student", student_revision(1))


def test_standard_mode_declares_http_then_the_h2c_grpc_port(check_charts):
    body = _build("Standard")
    # HTTP first: KServe's Service maps port 80 to the first port.
    assert body["spec"]["predictor"]["model"]["ports"] == [
        {"name": "http1", "containerPort": 8080, "protocol": "TCP"},
        {"name": "h2c", "containerPort": PREDICTOR_GRPC_PORT, "protocol": "TCP"},
    ]
    assert check_charts.crd_schema_problems(body) == [] and check_charts.crd_problems(body) == []


def test_knative_mode_declares_no_port_knative_routes_one(check_charts):
    body = _build("Knative")
    assert "ports" not in body["spec"]["predictor"]["model"]
    assert check_charts.crd_schema_problems(body) == []


def test_the_chart_runtime_starts_the_predictor_with_the_grpc_port_the_isvc_declares():
    template = (ROOT / "charts/slmops/templates/serving-runtime.yaml").read_text()
    assert f"--grpc-port={PREDICTOR_GRPC_PORT}" in template
    assert f"--grpc-port={PREDICTOR_GRPC_PORT}" in (ROOT / "k8s/cluster/serving-runtime.yaml").read_text()


def _isvc(mode: str) -> dict:
    name = "support-student"
    return {
        "metadata": {"name": name, "namespace": NS, "annotations": {
            "serving.kserve.io/deploymentMode": mode, "serving.slmops.io/revision": "1"}},
        "status": {
            "url": f"http://{name}.{NS}.example.com",
            "address": {"url": f"http://{name}-predictor.{NS}.svc.cluster.local"},
            "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
            "components": {"predictor": {"address": {"url": f"http://{name}-predictor.{NS}.svc.cluster.local"}}},
        },
    }  # fmt: skip


def test_the_grpc_address_is_the_predictor_service_in_standard_mode_only():
    standard = status_of(_isvc("Standard"))
    assert standard.state == "READY" and standard.ready_revision == 1
    assert standard.grpc_address == f"support-student-predictor.{NS}.svc.cluster.local:{PREDICTOR_GRPC_PORT}"
    assert status_of(_isvc("Knative")).grpc_address == ""
