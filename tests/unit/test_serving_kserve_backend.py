"""The kserve serving backend against kmock's Kubernetes emulator.

The emulator (`kmock.KubernetesEmulator`) keeps the objects that the official
Kubernetes client creates, patches and deletes, over real HTTP; it runs on its
own event loop in a thread because the client is synchronous. It does not run
KServe's controller: where a test needs a status, it patches the object's
`status` subresource through the API the way KServe's controller would.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import threading
import time
from pathlib import Path

import kmock
import pytest
import yaml
from kubernetes import client as k8s

from slmops.core.errors import InvalidSpec, NotFound, Unavailable
from slmops.serving.backends import DEPLOYING, FAILED, READY, Revision, ServingBackend
from slmops.serving.backends.kserve import GROUP, PLURAL, VERSION, KServeBackend

ROOT = Path(__file__).resolve().parents[2]
NS = "slmops"


class _Emulator:
    """kmock's Kubernetes emulator served on a free local port from a background thread."""

    def __init__(self):
        self.url = ""
        self.emulator: kmock.KubernetesEmulator | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self):
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "the Kubernetes emulator did not start"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _api_client(host: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = host
    return k8s.ApiClient(configuration)


@pytest.fixture()
def cluster():
    with _Emulator() as emulator:
        yield emulator


@pytest.fixture()
def api(cluster) -> k8s.ApiClient:
    return _api_client(cluster.url)


@pytest.fixture()
def backend(api) -> KServeBackend:
    return KServeBackend(api, namespace=NS, runtime="slmops-predictor", service_account="")


def _stored(api: k8s.ApiClient, name: str) -> dict:
    return k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def _report(api: k8s.ApiClient, name: str, status: dict) -> None:
    """What KServe's controller does: write the InferenceService's status subresource."""
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name,
                                                                     {"status": status})


def _rev(number: int, percent: int = 100) -> Revision:
    return Revision(number, f"artifact://support-student/rev-{number}",
                    f"s3://slmops-artifacts/prod/onnx-model/rev-{number:04d}", percent)


def test_backend_satisfies_the_protocol(backend):
    assert isinstance(backend, ServingBackend)


def test_apply_creates_the_inference_service_and_records_it(backend, api, tmp_path):
    applied = backend.apply("support-student", _rev(1), record_dir=tmp_path)

    stored = _stored(api, "support-student")
    predictor = stored["spec"]["predictor"]
    assert stored["kind"] == "InferenceService" and stored["metadata"]["namespace"] == NS
    assert predictor["model"]["storageUri"] == "s3://slmops-artifacts/prod/onnx-model/rev-0001"
    assert predictor["model"]["runtime"] == "slmops-predictor"
    assert predictor["model"]["modelFormat"] == {"name": "onnx-genai", "version": "1"}
    assert "canaryTrafficPercent" not in predictor
    assert "serviceAccountName" not in predictor
    assert stored["metadata"]["annotations"]["serving.slmops.io/revision"] == "1"

    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert recorded == applied
    assert recorded["spec"] == stored["spec"]


def test_service_account_from_settings(api, monkeypatch):
    monkeypatch.setenv("SLMOPS_KSERVE_SERVICE_ACCOUNT", "slmops-storage")
    monkeypatch.setenv("SLMOPS_KSERVE_NAMESPACE", NS)
    backend = KServeBackend(api)
    backend.apply("support-student", _rev(1))
    assert _stored(api, "support-student")["spec"]["predictor"]["serviceAccountName"] == "slmops-storage"


def test_canary_promote_rollback_and_delete(backend, api, tmp_path):
    backend.apply("support-student", _rev(1))

    backend.apply("support-student", _rev(2, percent=10), record_dir=tmp_path)
    predictor = _stored(api, "support-student")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"].endswith("/rev-0002")
    annotations = _stored(api, "support-student")["metadata"]["annotations"]
    assert annotations["serving.slmops.io/revision"] == "2"
    assert annotations["serving.slmops.io/rolled-out-revision"] == "1"
    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert recorded["spec"]["predictor"]["canaryTrafficPercent"] == 10

    backend.promote("support-student", record_dir=tmp_path)
    stored = _stored(api, "support-student")
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert stored["metadata"]["annotations"]["serving.slmops.io/rolled-out-revision"] == "2"
    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert "canaryTrafficPercent" not in recorded["spec"]["predictor"] and "status" not in recorded

    backend.apply("support-student", _rev(3, percent=20))
    backend.rollback("support-student")
    stored = _stored(api, "support-student")
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert stored["metadata"]["annotations"]["serving.slmops.io/rolled-out-revision"] == "2"

    backend.delete("support-student")
    with pytest.raises(NotFound):
        backend.status("support-student")
    with pytest.raises(NotFound):
        backend.delete("support-student")


def test_status_reads_conditions_traffic_and_url(backend, api):
    backend.apply("support-student", _rev(1))
    assert backend.status("support-student").state == DEPLOYING

    backend.apply("support-student", _rev(2, percent=10))
    _report(api, "support-student", {
        "url": "http://support-student.slmops.example.com",
        "conditions": [
            {"type": "PredictorReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "components": {"predictor": {
            "latestCreatedRevision": "support-student-predictor-00002",
            "latestReadyRevision": "support-student-predictor-00002",
            "traffic": [
                {"revisionName": "support-student-predictor-00002", "percent": 10, "latestRevision": True,
                 "tag": "latest"},
                {"revisionName": "support-student-predictor-00001", "percent": 90, "latestRevision": False,
                 "tag": "prev"},
            ],
        }},
    })
    status = backend.status("support-student")
    assert status.state == READY and status.reason == ""
    assert status.url == "http://support-student.slmops.example.com"
    assert status.traffic == {2: 10, 1: 90}
    assert status.ready_revision == 2


def test_failed_revision_is_reported_with_its_reason(backend, api):
    backend.apply("support-student", _rev(1))
    backend.apply("support-student", _rev(2, percent=10))
    _report(api, "support-student", {
        "conditions": [
            {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed",
             "message": 'Revision "support-student-predictor-00002" failed with message: container exited.'},
            {"type": "Ready", "status": "False", "reason": "RevisionFailed",
             "message": 'Revision "support-student-predictor-00002" failed with message: container exited.'},
        ],
        "components": {"predictor": {
            "latestCreatedRevision": "support-student-predictor-00002",
            "latestReadyRevision": "support-student-predictor-00001",
            "traffic": [{"revisionName": "support-student-predictor-00001", "percent": 100,
                         "latestRevision": False}],
        }},
    })
    status = backend.status("support-student")
    assert status.state == FAILED
    assert "RevisionFailed" in status.reason and "container exited" in status.reason
    assert status.ready_revision == 1
    assert status.traffic == {1: 100}


def test_missing_inference_service_is_not_found(backend):
    with pytest.raises(NotFound):
        backend.status("nobody")


def test_invalid_names_and_percents_are_refused_before_any_call(backend):
    with pytest.raises(InvalidSpec) as caught:
        backend.apply("Not_A_Name", Revision(0, "m", "", 150))
    assert {field for field, _ in caught.value.problems} == {"name", "revision", "storage_uri", "traffic_percent"}


def test_unreachable_api_server_is_unavailable_quickly():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 0
    backend = KServeBackend(k8s.ApiClient(configuration), namespace=NS, request_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot be reached.*connection refused"):
        backend.status("support-student")
    assert time.monotonic() - started < 5


def test_built_inference_service_matches_the_project_manifests(monkeypatch):
    example = yaml.safe_load((ROOT / "k8s/examples/inferenceservice-onnx.yaml").read_text())
    runtime = yaml.safe_load((ROOT / "k8s/cluster/serving-runtime.yaml").read_text())
    built = KServeBackend(k8s.ApiClient(), namespace=NS, runtime="slmops-predictor").build("support-student", _rev(1))

    assert built["apiVersion"] == example["apiVersion"] and built["kind"] == example["kind"]
    model, expected = built["spec"]["predictor"]["model"], example["spec"]["predictor"]["model"]
    assert model["runtime"] == expected["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] == expected["modelFormat"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert set(built["spec"]["predictor"]) >= set(example["spec"]["predictor"])
    assert built["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"

    # The same check `scripts/check_charts.py` runs on the project's InferenceService manifests.
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    check_charts = importlib.import_module("check_charts")
    canary = KServeBackend(k8s.ApiClient(), namespace=NS).build("support-student", _rev(2, percent=10))
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert check_charts.crd_problems(built) == [] and check_charts.crd_problems(canary) == []


def test_api_server_that_never_answers_times_out_as_unavailable():
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        configuration = k8s.Configuration()
        configuration.host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        configuration.retries = 0
        backend = KServeBackend(k8s.ApiClient(configuration), namespace=NS, request_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"cannot be reached \(timed out after 0.5s\)"):
            backend.status("support-student")
        assert time.monotonic() - started < 3
