"""The kserve serving backend against kmock's Kubernetes emulator (tests/unit/_kserve_emulator.py).

The emulator keeps the objects the official Kubernetes client creates, patches
and deletes, over real HTTP. It does not run KServe's controller: where a test
needs a status, it patches the object's `status` subresource through the API
the way KServe's controller would. test_serving_kserve_manifests.py holds what
the backend writes against the project's manifests, KServe's CRD and the
documented kubectl rollbacks.
"""

from __future__ import annotations

import socket
import time

import pytest
import yaml
from kubernetes import client as k8s

from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound, Unavailable
from slmops.serving.backends import DEPLOYING, FAILED, READY, Revision, ServingBackend
from slmops.serving.backends.kserve import KServeBackend
from tests.unit._kserve_emulator import (
    NS,
    Emulator,
    api_client,
    foreign_service,
    knative_status,
    report_status,
    stored_object,
    student_revision,
)


@pytest.fixture()
def cluster():
    with Emulator() as emulator:
        yield emulator


@pytest.fixture()
def api(cluster) -> k8s.ApiClient:
    return api_client(cluster.url)


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


def test_backend_satisfies_the_protocol(backend):
    assert isinstance(backend, ServingBackend)


def test_apply_creates_the_inference_service_and_records_it(backend, api, tmp_path):
    applied = backend.apply("support-student", student_revision(1), record_dir=tmp_path)

    stored = stored_object(api, "support-student")
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
    backend.apply("support-student", student_revision(1))
    stored = stored_object(api, "support-student")
    assert stored["spec"]["predictor"]["serviceAccountName"] == "slmops-storage"
    assert stored["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert stored["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert stored["metadata"]["labels"]["slmops.io/owner"] == "release-a"

    monkeypatch.setenv("SLMOPS_KSERVE_DEPLOYMENT_MODE", "Serverful")
    with pytest.raises(InvalidSpec, match="SLMOPS_KSERVE_DEPLOYMENT_MODE"):
        KServeBackend(api)


def test_a_canary_is_refused_in_standard_mode(backend, api):
    backend.apply("support-student", student_revision(1))
    with pytest.raises(InvalidSpec, match="Knative") as caught:
        backend.apply("support-student", student_revision(2, percent=10))
    assert caught.value.problems[0][0] == "traffic_percent"
    with pytest.raises(InvalidSpec, match="Knative"):
        backend.set_traffic("support-student", 30)
    stored = stored_object(api, "support-student")
    assert stored["spec"]["predictor"]["model"]["storageUri"].endswith("/rev-0001")  # nothing was patched
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]

    backend.apply("support-student", student_revision(2))  # a replacement is what Standard mode does
    assert stored_object(api, "support-student")["spec"]["predictor"]["model"]["storageUri"].endswith(
        "/rev-0002"
    )


def test_canary_promote_rollback_and_delete(knative, api, tmp_path):
    backend = knative
    backend.apply("support-student", student_revision(1))

    backend.apply("support-student", student_revision(2, percent=10), record_dir=tmp_path)
    predictor = stored_object(api, "support-student")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"].endswith("/rev-0002")
    annotations = stored_object(api, "support-student")["metadata"]["annotations"]
    assert annotations["serving.slmops.io/revision"] == "2"
    assert annotations["serving.slmops.io/rolled-out-revision"] == "1"
    assert annotations["slmops.io/rolled-out-revisions"] == "1"  # a canary is not rolled out
    assert annotations["slmops.io/revision-1-storage-uri"].endswith("/rev-0001")  # the earlier model is kept
    assert annotations["slmops.io/revision-2-storage-uri"].endswith("/rev-0002")
    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert recorded["spec"]["predictor"]["canaryTrafficPercent"] == 10

    backend.promote("support-student", record_dir=tmp_path)
    stored = stored_object(api, "support-student")
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert stored["metadata"]["annotations"]["serving.slmops.io/rolled-out-revision"] == "2"
    assert stored["metadata"]["annotations"]["slmops.io/rolled-out-revisions"] == "1,2"
    recorded = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert "canaryTrafficPercent" not in recorded["spec"]["predictor"] and "status" not in recorded

    backend.apply("support-student", student_revision(3, percent=20))
    backend.rollback("support-student")
    stored = stored_object(api, "support-student")
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
    first.apply("support-student", student_revision(1), record_dir=tmp_path / "before")
    first.apply("support-student", student_revision(2, percent=10), record_dir=tmp_path / "before")
    first.promote("support-student", record_dir=tmp_path / "before")

    # A restarted serving pod: a new backend, an empty data folder, nothing but the cluster.
    restarted = KServeBackend(api, namespace=NS, runtime="slmops-predictor", deployment_mode="Knative",
                              owner="slmops-test")  # fmt: skip
    empty = tmp_path / "after"
    restarted.rollback("support-student", record_dir=empty)
    stored = stored_object(api, "support-student")
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
    knative.apply("support-student", student_revision(1))
    assert knative.status("support-student").state == DEPLOYING

    knative.apply("support-student", student_revision(2, percent=10))
    knative_status(api, "support-student", 2, {2: 10, 1: 90})
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
    knative.apply("support-student", student_revision(1))
    knative.apply("support-student", student_revision(2, percent=10))
    # Knative's "latest" target still reaches revision 1 until revision 2 is ready.
    knative_status(api, "support-student", 2, {2: 10, 1: 90}, ready=False)
    status = knative.status("support-student")
    assert status.ready_revision == 1
    assert 2 not in status.revisions
    assert status.revisions[1].url == f"http://prev-support-student-predictor.{NS}.svc.cluster.local"


def test_standard_mode_status_reads_the_address(backend, api):
    backend.apply("support-student", student_revision(1))
    report_status(api, "support-student", {
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
    knative.apply("support-student", student_revision(1))
    knative.apply("support-student", student_revision(2, percent=10))
    report_status(
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
    model = stored_object(api, "support-student")["spec"]["predictor"]["model"]
    assert model["runtime"] == "slmops-predictor"
    assert model["resources"] == {"requests": {"cpu": "500m", "memory": "6Gi"},
                                  "limits": {"cpu": "500m", "memory": "6Gi"}}  # fmt: skip

    backend.apply("support-student", Revision(2, "m", "s3://b/m2", cpus=4, gpus=1))
    model = stored_object(api, "support-student")["spec"]["predictor"]["model"]
    assert model["runtime"] == "slmops-predictor-cuda"
    assert model["resources"]["limits"] == {"cpu": "4", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert model["resources"]["requests"]["nvidia.com/gpu"] == "1"

    no_gpu = KServeBackend(api, namespace=NS, runtime="slmops-predictor", owner="slmops-test")
    with pytest.raises(InvalidSpec, match="SLMOPS_KSERVE_RUNTIME_GPU") as caught:
        no_gpu.build("support-student", Revision(3, "m", "s3://b/m3", gpus=1))
    assert caught.value.problems[0][0] == "resources.gpus_per_worker"


@pytest.mark.parametrize("labels", [None, {"slmops.io/owner": "another-release"}])
def test_an_inference_service_that_is_not_ours_is_never_patched_or_deleted(backend, api, labels):
    before = foreign_service(api, "support-student", labels)
    for act, error in (
        (lambda: backend.apply("support-student", student_revision(1)), AlreadyExists),
        (lambda: backend.delete("support-student"), Conflict),
        (lambda: backend.promote("support-student"), Conflict),
        (lambda: backend.rollback("support-student"), Conflict),
        (lambda: backend.status("support-student"), Conflict),
        (lambda: backend.check_owner("support-student"), AlreadyExists),
    ):
        with pytest.raises(error, match="exists and is not managed by this slmops"):
            act()
    after = stored_object(api, "support-student")
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


def test_standard_mode_keeps_the_previous_revision_serving_while_the_next_rolls_out(backend, api):
    backend.apply("support-student", student_revision(1))
    backend.apply("support-student", student_revision(2))
    address = {"url": f"http://support-student-predictor.{NS}.svc.cluster.local"}
    # KServe marks the predictor Unknown while the Deployment rolls (Progressing: ReplicaSetUpdated).
    rolling = {"type": "PredictorReady", "status": "Unknown", "reason": "ReplicaSetUpdated"}
    report_status(
        api, "support-student", {"address": address, "conditions": [rolling, {**rolling, "type": "Ready"}]}
    )
    status = backend.status("support-student")
    assert (status.state, status.ready_revision, status.traffic) == (READY, 1, {1: 100})

    stuck = {"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet has timed out progressing."}  # fmt: skip
    report_status(
        api, "support-student", {"address": address, "conditions": [stuck, {**stuck, "type": "Ready"}]}
    )
    status = backend.status("support-student")
    assert (status.state, status.ready_revision, status.traffic) == (FAILED, 1, {1: 100})
    assert "ProgressDeadlineExceeded" in status.reason
