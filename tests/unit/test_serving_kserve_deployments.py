"""The serving service's deployments on the kserve backend, against kmock's Kubernetes emulator.

The same Deployments the local backend runs drive InferenceServices: a create,
a canary, promote and rollback patch the resource in KServe's terms, the
records follow the status KServe's controller writes (here written by the
test, as in test_serving_kserve_backend.py: the emulator runs no controller).
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import yaml
from kubernetes import client as k8s

from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound
from slmops.core.jobs.store import JobStore
from slmops.serving.backends.kserve import GROUP, PLURAL, VERSION, KServeBackend
from slmops.serving.deployments import Deployments, revision_id
from tests.unit._kserve_emulator import (
    NS,
    Emulator,
    api_client,
    foreign_service,
    knative_status,
    report_status,
)

NAME = "support"
M1, M2 = "s3://slmops-artifacts/onnx-model/m1", "s3://slmops-artifacts/onnx-model/m2"
OWNER = "slmops-test"


@pytest.fixture()
def api():
    with Emulator() as emulator:
        yield api_client(emulator.url)


def _deployments(api, tmp_path, mode: str = "Knative") -> Deployments:
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", deployment_mode=mode, owner=OWNER)
    return Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=backend, poll_s=0.2)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "kserve")
    monkeypatch.setenv("SLMOPS_KSERVE_NAMESPACE", NS)
    return tmp_path


@pytest.fixture()
def deployments(api, env):
    return _deployments(api, env)


def _isvc(api) -> dict:
    return k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)


def _applied(api, storage_uri: str) -> bool:
    try:
        return _isvc(api)["spec"]["predictor"]["model"]["storageUri"] == storage_uri
    except k8s.ApiException:
        return False


def _failed(api, latest: int) -> None:
    """What KServe's controller reports when `latest`'s Knative revision cannot start."""
    condition = {"status": "False", "reason": "RevisionFailed", "message": "container exited with code 1"}
    report_status(api, NAME, {
        "url": f"http://{NAME}.{NS}.example.com",
        "conditions": [{**condition, "type": "Ready"}, {**condition, "type": "PredictorReady"}],
        "components": {"predictor": {
            "latestCreatedRevision": f"{NAME}-predictor-{latest:05d}",
            "latestReadyRevision": f"{NAME}-predictor-{latest - 1:05d}",
            "traffic": [{"revisionName": f"{NAME}-predictor-{latest - 1:05d}", "percent": 100,
                         "latestRevision": False}],
        }},
    })  # fmt: skip


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def _settled(deployments: Deployments) -> bool:
    record = deployments.get(NAME)
    return record.state == "READY" and record.result.get("settled") == record.config["generation"]


def _url(tag: str) -> str:
    return f"http://{tag}-{NAME}-predictor.{NS}.svc.cluster.local"


async def test_a_canary_promote_and_rollback_as_inferenceservice_patches(deployments, api, env):
    deployments.resume()
    try:
        record = await deployments.create({"name": NAME, "model_uri": M1})
        assert record.state == "DEPLOYING" and record.config["backend"] == "KSERVE"
        await _until(lambda: _applied(api, M1))
        assert deployments.get(NAME).state == "DEPLOYING"  # nothing ready yet
        knative_status(api, NAME, 1, {1: 100})
        await _until(lambda: _settled(deployments))
        # The deployment's URL is the cluster-local address; the external route is kept beside it.
        result = deployments.get(NAME).result
        assert result["url"] == f"http://{NAME}.{NS}.svc.cluster.local"
        assert result["external_url"] == f"http://{NAME}.{NS}.example.com"
        assert deployments.store.get(revision_id(NAME, 1)).state == "READY"
        assert deployments.store.get(revision_id(NAME, 1)).result["url"] == _url("latest")
        manifest = env / "data" / "deployments" / NAME / "inferenceservice.yaml"
        assert yaml.safe_load(manifest.read_text())["spec"]["predictor"]["model"]["storageUri"] == M1

        await deployments.update(NAME, M2, [], 20)
        predictor = _isvc(api)["spec"]["predictor"]
        assert (predictor["model"]["storageUri"], predictor["canaryTrafficPercent"]) == (M2, 20)
        assert yaml.safe_load(manifest.read_text())["spec"]["predictor"]["canaryTrafficPercent"] == 20
        knative_status(api, NAME, 2, {2: 20, 1: 80})
        await _until(lambda: _settled(deployments))
        assert deployments.get(NAME).result["traffic"] == {"1": 80, "2": 20}
        canary, stable = (deployments.store.get(revision_id(NAME, n)) for n in (2, 1))
        assert canary.result["traffic_percent"] == 20
        # Each revision is reached alone at its tag's URL, so an evaluation measures it and not the mix.
        assert canary.result["url"] == _url("latest") and stable.result["url"] == _url("prev")
        assert canary.result["external_url"] == f"http://latest-{NAME}-predictor.{NS}.example.com"

        await deployments.promote(NAME)
        assert "canaryTrafficPercent" not in _isvc(api)["spec"]["predictor"]
        knative_status(api, NAME, 2, {2: 100})
        await _until(lambda: _settled(deployments))
        await _until(lambda: deployments.store.get(revision_id(NAME, 1)).state == "RETIRED")
        assert deployments.store.get(revision_id(NAME, 2)).result["url"] == _url("latest")

        await deployments.rollback(NAME)  # after a promotion: the revision served before, applied again
        isvc = _isvc(api)
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == M1
        assert isvc["metadata"]["annotations"]["serving.slmops.io/revision"] == "1"
        assert isvc["metadata"]["annotations"]["slmops.io/rolled-out-revisions"] == "1"
        knative_status(api, NAME, 1, {1: 100})
        await _until(lambda: _settled(deployments))
        assert deployments.store.get(revision_id(NAME, 2)).reason == "rolled back to revision 1"

        await deployments.delete(NAME)
        with pytest.raises(k8s.ApiException):
            _isvc(api)
    finally:
        await deployments.close()


async def test_a_failed_canary_leaves_the_deployment_serving_and_a_failed_first_revision_is_left_in_place(
    deployments, api
):
    deployments.resume()
    try:
        await deployments.create({"name": NAME, "model_uri": M1})
        await _until(lambda: _applied(api, M1))
        knative_status(api, NAME, 1, {1: 100})
        await _until(lambda: _settled(deployments))
        await deployments.update(NAME, M2, [], 30)
        _failed(api, 2)
        await _until(lambda: deployments.store.get(revision_id(NAME, 2)).state == "FAILED")
        assert "container exited" in deployments.store.get(revision_id(NAME, 2)).reason
        assert deployments.get(NAME).state == "READY"
        with pytest.raises(Conflict, match="no canary"):  # a failed canary is no canary
            await deployments.promote(NAME)
        await deployments.delete(NAME)

        await deployments.create({"name": NAME, "model_uri": M1})  # the name again: revision 3
        await _until(lambda: _applied(api, M1))
        report_status(api, NAME, {"conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed",
                                            "message": "image pull failed"}]})  # fmt: skip
        await _until(lambda: deployments.get(NAME).state == "FAILED")
        reason = deployments.get(NAME).reason
        assert "image pull failed" in reason and "left in place for inspection" in reason
        assert deployments.get(NAME).config["serving"] == 3
        await asyncio.sleep(0.5)  # a poll or two later: still there
        assert _isvc(api)["spec"]["predictor"]["model"]["storageUri"] == M1

        await deployments.delete(NAME)  # deleting the deployment removes it
        with pytest.raises(k8s.ApiException):
            _isvc(api)
    finally:
        await deployments.close()


async def test_rollback_after_a_promotion_with_an_empty_data_folder(api, env):
    first = _deployments(api, env)
    first.resume()
    try:
        await first.create({"name": NAME, "model_uri": M1})
        await _until(lambda: _applied(api, M1))
        knative_status(api, NAME, 1, {1: 100})
        await _until(lambda: _settled(first))
        await first.update(NAME, M2, [], 10)
        knative_status(api, NAME, 2, {2: 10, 1: 90})
        await _until(lambda: _settled(first))
        await first.promote(NAME)
        knative_status(api, NAME, 2, {2: 100})
        await _until(lambda: _settled(first))
    finally:
        await first.close()

    # The serving pod restarts with an empty data folder (an emptyDir): only the cluster and the job store remain.
    shutil.rmtree(env / "data")
    restarted = _deployments(api, env)
    restarted.resume()
    try:
        await restarted.rollback(NAME)
        isvc = _isvc(api)
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == M1
        assert isvc["metadata"]["annotations"]["serving.slmops.io/revision"] == "1"
        knative_status(api, NAME, 1, {1: 100})
        await _until(lambda: _settled(restarted))
        assert restarted.get(NAME).config["serving"] == 1
    finally:
        await restarted.close()


async def test_an_inference_service_of_the_same_name_that_is_not_ours_is_left_alone(deployments, api):
    before = foreign_service(api, NAME)
    with pytest.raises(AlreadyExists, match="exists and is not managed by this slmops"):
        await deployments.create({"name": NAME, "model_uri": M1})
    after = _isvc(api)
    assert after["spec"] == before["spec"] and after["metadata"]["labels"] == before["metadata"]["labels"]
    with pytest.raises(NotFound):
        deployments.get(NAME)  # nothing recorded


async def test_a_canary_is_refused_in_standard_mode(api, env):
    deployments = _deployments(api, env, mode="Standard")
    deployments.resume()
    try:
        await deployments.create({"name": NAME, "model_uri": M1})
        await _until(lambda: _applied(api, M1))
        assert _isvc(api)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        with pytest.raises(InvalidSpec, match="Knative") as caught:
            await deployments.update(NAME, M2, [], 20)
        assert caught.value.problems[0][0] == "canary_traffic_percent"
        assert [r.config["number"] for r in deployments.revisions(NAME)] == [1]  # nothing recorded
        assert _applied(api, M1)
        await deployments.update(NAME, M2, [], 100)  # a replacement is fine
        await _until(lambda: _applied(api, M2))
    finally:
        await deployments.close()


async def test_resources_reach_the_predictor_and_gpus_need_the_gpu_runtime(api, env, monkeypatch):
    spec = {"name": NAME, "model_uri": M1, "resources": {"cpus_per_worker": 3, "memory": "12Gi",
                                                         "gpus_per_worker": 1}}  # fmt: skip
    deployments = _deployments(api, env)
    with pytest.raises(InvalidSpec, match="SLMOPS_KSERVE_RUNTIME_GPU") as caught:
        await deployments.create(spec)
    assert caught.value.problems[0][0] == "spec.resources.gpus_per_worker"

    monkeypatch.setenv("SLMOPS_KSERVE_RUNTIME_GPU", "slmops-predictor-cuda")
    deployments = _deployments(api, env)  # the backend reads the GPU runtime from the same setting
    deployments.resume()
    try:
        await deployments.create(spec)
        await _until(lambda: _applied(api, M1))
        model = _isvc(api)["spec"]["predictor"]["model"]
        assert model["runtime"] == "slmops-predictor-cuda"
        assert model["resources"]["limits"] == {"cpu": "3", "memory": "12Gi", "nvidia.com/gpu": "1"}
        assert model["resources"]["requests"] == {"cpu": "3", "memory": "12Gi", "nvidia.com/gpu": "1"}
        await deployments.update(NAME, M2, [], 20)  # a new revision keeps the deployment's resources
        assert _isvc(api)["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    finally:
        await deployments.close()


async def test_an_unreachable_api_server_fails_the_deployment_with_the_reason(env):
    backend = KServeBackend(
        api_client("http://127.0.0.1:9"), namespace=NS, request_timeout_s=1.0, owner=OWNER
    )
    deployments = Deployments(JobStore(f"sqlite:///{env}/serving.db"), backend=backend, poll_s=0.2)
    deployments.resume()
    try:
        with pytest.raises(Exception, match="cannot be reached"):
            await deployments.create({"name": NAME, "model_uri": M1})
    finally:
        await deployments.close()
