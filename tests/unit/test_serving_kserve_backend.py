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
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import kmock
import pytest
import yaml
from kubernetes import client as k8s

from slmops.core.errors import Conflict, InvalidSpec, NotFound, Unavailable
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
            # API discovery for kubectl, as KServe's CRD declares the resource.
            info = emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"]
            info.kind, info.singular, info.shortnames, info.namespaced = "InferenceService", "inferenceservice", \
                {"isvc"}, True  # fmt: skip
            info.verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
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
    """Standard mode, the default."""
    return KServeBackend(
        api, namespace=NS, runtime="slmops-predictor", service_account="", owner="slmops-test"
    )


@pytest.fixture()
def knative(api) -> KServeBackend:
    return KServeBackend(
        api, namespace=NS, runtime="slmops-predictor", deployment_mode="Knative", owner="slmops-test"
    )


def _stored(api: k8s.ApiClient, name: str) -> dict:
    return k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def _report(api: k8s.ApiClient, name: str, status: dict) -> None:
    """What KServe's controller does: write the InferenceService's status subresource."""
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, name, {"status": status}
    )


def _rev(number: int, percent: int = 100) -> Revision:
    return Revision(
        number,
        f"artifact://support-student/rev-{number}",
        f"s3://slmops-artifacts/prod/onnx-model/rev-{number:04d}",
        percent,
    )


def _knative(
    api: k8s.ApiClient,
    name: str,
    latest: int,
    split: dict[int, int],
    *,
    rolled_out: int | None = None,
    ready: bool = True,
) -> None:
    """What KServe's controller writes in Knative mode with tag routing (the emulator runs no controller).

    `split` maps our revision numbers to percents; the latest revision's target is tagged "latest", the
    rolled-out one's "prev" (only while a canary runs), each with its own URL. Until `latest` is ready,
    Knative's "latest" target still points at the revision before it.
    """
    rolled_out = rolled_out if rolled_out is not None else min(split)
    ready_rev = latest if ready else rolled_out
    traffic = []
    for number, percent in split.items():
        is_latest = number == latest
        target = {
            "revisionName": f"{name}-predictor-{(ready_rev if is_latest else number):05d}",
            "percent": percent,
            "latestRevision": is_latest,
            "tag": "latest" if is_latest else "prev",
        }
        target["url"] = f"http://{target['tag']}-{name}-predictor.{NS}.example.com"
        traffic.append(target)
    _report(api, name, {
        "url": f"http://{name}.{NS}.example.com",
        "address": {"url": f"http://{name}.{NS}.svc.cluster.local"},
        "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
        "components": {"predictor": {
            "address": {"url": f"http://{name}-predictor.{NS}.svc.cluster.local"},
            "latestCreatedRevision": f"{name}-predictor-{latest:05d}",
            "latestReadyRevision": f"{name}-predictor-{ready_rev:05d}",
            "traffic": traffic,
        }},
    })  # fmt: skip


def _foreign(api: k8s.ApiClient, name: str, labels: dict[str, str] | None = None) -> dict:
    """An InferenceService someone else made (kubectl, another release): no slmops owner label."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {"team": "search"}},
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://theirs/model"}}
        },
    }
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    return _stored(api, name)


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
    assert predictor["model"]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}  # the defaults
    assert "canaryTrafficPercent" not in predictor
    assert "serviceAccountName" not in predictor
    annotations, labels = stored["metadata"]["annotations"], stored["metadata"]["labels"]
    assert annotations["serving.slmops.io/revision"] == "1"
    # Standard mode by default: no canary, no tags to route on.
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert "serving.kserve.io/enable-tag-routing" not in annotations
    assert labels["slmops.io/owner"] == "slmops-test" and labels["app.kubernetes.io/managed-by"] == "slmops"
    assert annotations["slmops.io/revision-1-storage-uri"] == "s3://slmops-artifacts/prod/onnx-model/rev-0001"
    assert annotations["slmops.io/revision-1-model-uri"] == "artifact://support-student/rev-1"
    assert annotations["slmops.io/rolled-out-revisions"] == "1"

    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert recorded == applied
    assert recorded["spec"] == stored["spec"]


def test_service_account_and_mode_from_settings(api, monkeypatch):
    monkeypatch.setenv("SLMOPS_KSERVE_SERVICE_ACCOUNT", "slmops-storage")
    monkeypatch.setenv("SLMOPS_KSERVE_NAMESPACE", NS)
    monkeypatch.setenv("SLMOPS_KSERVE_DEPLOYMENT_MODE", "Knative")
    monkeypatch.setenv("SLMOPS_KSERVE_OWNER", "release-a")
    backend = KServeBackend(api)
    backend.apply("support-student", _rev(1))
    stored = _stored(api, "support-student")
    assert stored["spec"]["predictor"]["serviceAccountName"] == "slmops-storage"
    assert stored["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert stored["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert stored["metadata"]["labels"]["slmops.io/owner"] == "release-a"

    monkeypatch.setenv("SLMOPS_KSERVE_DEPLOYMENT_MODE", "Serverful")
    with pytest.raises(InvalidSpec, match="SLMOPS_KSERVE_DEPLOYMENT_MODE"):
        KServeBackend(api)


def test_a_canary_is_refused_in_standard_mode(backend, api):
    backend.apply("support-student", _rev(1))
    with pytest.raises(InvalidSpec, match="Knative") as caught:
        backend.apply("support-student", _rev(2, percent=10))
    assert caught.value.problems[0][0] == "traffic_percent"
    with pytest.raises(InvalidSpec, match="Knative"):
        backend.set_traffic("support-student", 30)
    stored = _stored(api, "support-student")
    assert stored["spec"]["predictor"]["model"]["storageUri"].endswith("/rev-0001")  # nothing was patched
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]

    backend.apply("support-student", _rev(2))  # a replacement is what Standard mode does
    assert _stored(api, "support-student")["spec"]["predictor"]["model"]["storageUri"].endswith("/rev-0002")


def test_canary_promote_rollback_and_delete(knative, api, tmp_path):
    backend = knative
    backend.apply("support-student", _rev(1))

    backend.apply("support-student", _rev(2, percent=10), record_dir=tmp_path)
    predictor = _stored(api, "support-student")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"].endswith("/rev-0002")
    annotations = _stored(api, "support-student")["metadata"]["annotations"]
    assert annotations["serving.slmops.io/revision"] == "2"
    assert annotations["serving.slmops.io/rolled-out-revision"] == "1"
    assert annotations["slmops.io/rolled-out-revisions"] == "1"  # a canary is not rolled out
    assert annotations["slmops.io/revision-1-storage-uri"].endswith("/rev-0001")  # the earlier model is kept
    assert annotations["slmops.io/revision-2-storage-uri"].endswith("/rev-0002")
    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert recorded["spec"]["predictor"]["canaryTrafficPercent"] == 10

    backend.promote("support-student", record_dir=tmp_path)
    stored = _stored(api, "support-student")
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert stored["metadata"]["annotations"]["serving.slmops.io/rolled-out-revision"] == "2"
    assert stored["metadata"]["annotations"]["slmops.io/rolled-out-revisions"] == "1,2"
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


def test_rollback_after_a_promotion_needs_only_the_annotations(api, tmp_path):
    first = KServeBackend(api, namespace=NS, runtime="slmops-predictor", deployment_mode="Knative",
                          owner="slmops-test")  # fmt: skip
    first.apply("support-student", _rev(1), record_dir=tmp_path / "before")
    first.apply("support-student", _rev(2, percent=10), record_dir=tmp_path / "before")
    first.promote("support-student", record_dir=tmp_path / "before")

    # A restarted serving pod: a new backend, an empty data folder, nothing but the cluster.
    restarted = KServeBackend(api, namespace=NS, runtime="slmops-predictor", deployment_mode="Knative",
                              owner="slmops-test")  # fmt: skip
    empty = tmp_path / "after"
    restarted.rollback("support-student", record_dir=empty)
    stored = _stored(api, "support-student")
    assert stored["spec"]["predictor"]["model"]["storageUri"].endswith("/rev-0001")
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    annotations = stored["metadata"]["annotations"]
    assert annotations["serving.slmops.io/revision"] == "1"
    assert annotations["serving.slmops.io/rolled-out-revision"] == "1"
    assert annotations["slmops.io/rolled-out-revisions"] == "1"
    assert annotations["slmops.io/revision-2-storage-uri"].endswith(
        "/rev-0002"
    )  # still there to go forward again
    assert yaml.safe_load((empty / "inferenceservice.yaml").read_text())["spec"] == stored["spec"]

    with pytest.raises(Conflict, match="no earlier revision"):
        restarted.rollback("support-student")


def test_status_gives_each_revision_its_tagged_url(knative, api):
    knative.apply("support-student", _rev(1))
    assert knative.status("support-student").state == DEPLOYING

    knative.apply("support-student", _rev(2, percent=10))
    _knative(api, "support-student", 2, {2: 10, 1: 90})
    status = knative.status("support-student")
    assert status.state == READY and status.reason == ""
    # In-cluster callers get the cluster-local address; the external route is reported beside it.
    assert status.url == f"http://support-student.{NS}.svc.cluster.local"
    assert status.external_url == f"http://support-student.{NS}.example.com"
    assert status.traffic == {2: 10, 1: 90}
    assert status.ready_revision == 2
    canary, stable = status.revisions[2], status.revisions[1]
    assert canary.url == f"http://latest-support-student-predictor.{NS}.svc.cluster.local"
    assert canary.external_url == f"http://latest-support-student-predictor.{NS}.example.com"
    assert stable.url == f"http://prev-support-student-predictor.{NS}.svc.cluster.local"
    assert stable.external_url == f"http://prev-support-student-predictor.{NS}.example.com"
    assert canary.state == stable.state == READY


def test_a_canary_not_ready_yet_gets_no_url(knative, api):
    knative.apply("support-student", _rev(1))
    knative.apply("support-student", _rev(2, percent=10))
    # Knative's "latest" target still reaches revision 1 until revision 2 is ready.
    _knative(api, "support-student", 2, {2: 10, 1: 90}, ready=False)
    status = knative.status("support-student")
    assert status.ready_revision == 1
    assert 2 not in status.revisions
    assert status.revisions[1].url == f"http://prev-support-student-predictor.{NS}.svc.cluster.local"


def test_standard_mode_status_reads_the_address(backend, api):
    backend.apply("support-student", _rev(1))
    _report(api, "support-student", {
        "url": f"http://support-student-{NS}.example.com",
        "address": {"url": f"http://support-student-predictor.{NS}.svc.cluster.local"},
        "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
        "components": {"predictor": {"url": f"http://support-student-predictor-{NS}.example.com"}},
    })  # fmt: skip
    status = backend.status("support-student")
    assert (status.state, status.ready_revision, status.traffic) == (READY, 1, {1: 100})
    assert status.url == f"http://support-student-predictor.{NS}.svc.cluster.local"
    assert status.external_url == f"http://support-student-{NS}.example.com"


def test_failed_revision_is_reported_with_its_reason(knative, api):
    knative.apply("support-student", _rev(1))
    knative.apply("support-student", _rev(2, percent=10))
    _report(
        api,
        "support-student",
        {
            "conditions": [
                {
                    "type": "PredictorReady",
                    "status": "False",
                    "reason": "RevisionFailed",
                    "message": 'Revision "support-student-predictor-00002" failed with message: container exited.',
                },
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "RevisionFailed",
                    "message": 'Revision "support-student-predictor-00002" failed with message: container exited.',
                },
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": "support-student-predictor-00002",
                    "latestReadyRevision": "support-student-predictor-00001",
                    "traffic": [
                        {
                            "revisionName": "support-student-predictor-00001",
                            "percent": 100,
                            "latestRevision": False,
                        }
                    ],
                }
            },
        },
    )
    status = knative.status("support-student")
    assert status.state == FAILED
    assert "RevisionFailed" in status.reason and "container exited" in status.reason
    assert status.ready_revision == 1
    assert status.traffic == {1: 100}


def test_resources_and_the_gpu_runtime(api):
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", runtime_gpu="slmops-predictor-cuda",
                            owner="slmops-test")  # fmt: skip
    backend.apply("support-student", Revision(1, "m", "s3://b/m", cpus=0.5, memory="6Gi"))
    model = _stored(api, "support-student")["spec"]["predictor"]["model"]
    assert model["runtime"] == "slmops-predictor"
    assert model["resources"] == {"requests": {"cpu": "500m", "memory": "6Gi"},
                                  "limits": {"cpu": "500m", "memory": "6Gi"}}  # fmt: skip

    backend.apply("support-student", Revision(2, "m", "s3://b/m2", cpus=4, gpus=1))
    model = _stored(api, "support-student")["spec"]["predictor"]["model"]
    assert model["runtime"] == "slmops-predictor-cuda"
    assert model["resources"]["limits"] == {"cpu": "4", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert model["resources"]["requests"]["nvidia.com/gpu"] == "1"

    no_gpu = KServeBackend(api, namespace=NS, runtime="slmops-predictor", owner="slmops-test")
    with pytest.raises(InvalidSpec, match="SLMOPS_KSERVE_RUNTIME_GPU") as caught:
        no_gpu.build("support-student", Revision(3, "m", "s3://b/m3", gpus=1))
    assert caught.value.problems[0][0] == "resources.gpus_per_worker"


@pytest.mark.parametrize("labels", [None, {"slmops.io/owner": "another-release"}])
def test_an_inference_service_that_is_not_ours_is_never_patched_or_deleted(backend, api, labels):
    before = _foreign(api, "support-student", labels)
    for act in (
        lambda: backend.apply("support-student", _rev(1)),
        lambda: backend.delete("support-student"),
        lambda: backend.promote("support-student"),
        lambda: backend.rollback("support-student"),
        lambda: backend.status("support-student"),
        lambda: backend.check_owner("support-student"),
    ):
        with pytest.raises(Conflict, match="exists and is not managed by this slmops"):
            act()
    after = _stored(api, "support-student")
    assert after["spec"] == before["spec"] and after["metadata"]["labels"] == before["metadata"]["labels"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")


def test_missing_inference_service_is_not_found(backend):
    with pytest.raises(NotFound):
        backend.status("nobody")
    backend.check_owner("nobody")  # nothing there: free to create


def test_invalid_names_and_percents_are_refused_before_any_call(backend):
    with pytest.raises(InvalidSpec) as caught:
        backend.apply("Not_A_Name", Revision(0, "m", "", 150))
    assert {field for field, _ in caught.value.problems} == {
        "name",
        "revision",
        "storage_uri",
        "traffic_percent",
    }


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
    built = KServeBackend(k8s.ApiClient(), namespace=NS, runtime="slmops-predictor", service_account="sa",
                          deployment_mode="Knative").build("support-student", _rev(1))  # fmt: skip

    assert built["apiVersion"] == example["apiVersion"] and built["kind"] == example["kind"]
    model, expected = built["spec"]["predictor"]["model"], example["spec"]["predictor"]["model"]
    assert model["runtime"] == expected["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] == expected["modelFormat"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert set(built["spec"]["predictor"]) >= set(example["spec"]["predictor"])
    mode = "serving.kserve.io/deploymentMode"
    assert built["metadata"]["annotations"][mode] == example["metadata"]["annotations"][mode] == "Knative"

    # The same check `scripts/check_charts.py` runs on the project's InferenceService manifests.
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    check_charts = importlib.import_module("check_charts")
    canary = KServeBackend(k8s.ApiClient(), namespace=NS, deployment_mode="Knative").build(
        "support-student", _rev(2, percent=10)
    )
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


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_every_inference_service_the_backend_writes_fits_kserves_crd(api, mode, monkeypatch):
    """Each object as built, and as stored after every operation, against the vendored KServe CRD
    (tests/fixtures/crds; scripts/check_charts.py): no unknown field, the right types and enums."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    check_charts = importlib.import_module("check_charts")
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", runtime_gpu="slmops-predictor-cuda",
                            service_account="slmops-storage", deployment_mode=mode, owner="slmops-test")  # fmt: skip
    name = "support-student"
    checked = []

    def check(doc: dict) -> None:
        assert check_charts.crd_schema_problems(doc) == [] and check_charts.crd_problems(doc) == []
        checked.append(doc)

    def stored() -> dict:
        check(_stored(api, name))

    check(backend.build(name, Revision(1, "m", "s3://b/m1", cpus=0.5, memory="3Gi")))
    backend.apply(name, Revision(1, "m", "s3://b/m1", cpus=0.5, memory="3Gi"))
    stored()
    check(backend.build(name, Revision(2, "m", "pvc://claim/m2", gpus=2)))
    if mode == "Knative":
        backend.apply(name, _rev(2, percent=10))
        stored()
        _knative(api, name, 2, {2: 10, 1: 90})  # the status as KServe writes it fits the CRD too
        stored()
        backend.promote(name)
        stored()
        backend.apply(name, _rev(3, percent=20))
        backend.rollback(name)
        stored()
    else:
        backend.apply(name, _rev(2))
        stored()
    backend.rollback(name)  # after a promotion or a replacement: from the annotations
    stored()
    assert len(checked) >= 5


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_documented_kubectl_rollbacks_work(cluster, api, knative, tmp_path):
    """The rollback commands of docs/rollouts.md, run as written with kubectl against the emulator."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs/rollouts.md").read_text(), re.S)
    before_promotion = next(b for b in blocks if '"canaryTrafficPercent": 0' in b)
    after_promotion = next(b for b in blocks if "rolled-out-revisions" in b and "storageUri" in b)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {}}],
    }))  # fmt: skip

    def run(script: str) -> None:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr

    name = "support-student"
    knative.apply(name, _rev(1))
    knative.apply(name, _rev(2, percent=10))
    run(before_promotion)
    assert _stored(api, name)["spec"]["predictor"]["canaryTrafficPercent"] == 0

    knative.promote(name)
    assert _stored(api, name)["metadata"]["annotations"]["slmops.io/rolled-out-revisions"] == "1,2"
    run(after_promotion)
    stored = _stored(api, name)
    assert stored["spec"]["predictor"]["model"]["storageUri"] == _rev(1).storage_uri
    annotations = stored["metadata"]["annotations"]
    assert (annotations["serving.slmops.io/revision"], annotations["serving.slmops.io/rolled-out-revision"],
            annotations["slmops.io/rolled-out-revisions"]) == ("1", "1", "1")  # fmt: skip
    # The service reads the result as revision 1 again, and knows there is nothing earlier.
    _knative(api, name, 1, {1: 100})
    assert knative.status(name).traffic == {1: 100}
    with pytest.raises(Conflict, match="no earlier revision"):
        knative.rollback(name)


def test_standard_mode_keeps_the_previous_revision_serving_while_the_next_rolls_out(backend, api):
    backend.apply("support-student", _rev(1))
    backend.apply("support-student", _rev(2))
    address = {"url": f"http://support-student-predictor.{NS}.svc.cluster.local"}
    # KServe marks the predictor Unknown while the Deployment rolls (Progressing: ReplicaSetUpdated).
    rolling = {"type": "PredictorReady", "status": "Unknown", "reason": "ReplicaSetUpdated"}
    _report(
        api, "support-student", {"address": address, "conditions": [rolling, {**rolling, "type": "Ready"}]}
    )
    status = backend.status("support-student")
    assert (status.state, status.ready_revision, status.traffic) == (READY, 1, {1: 100})

    stuck = {"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet has timed out progressing."}  # fmt: skip
    _report(api, "support-student", {"address": address, "conditions": [stuck, {**stuck, "type": "Ready"}]})
    status = backend.status("support-student")
    assert (status.state, status.ready_revision, status.traffic) == (FAILED, 1, {1: 100})
    assert "ProgressDeadlineExceeded" in status.reason
