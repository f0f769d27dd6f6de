"""The serving service's deployments on the kserve backend, against kmock's Kubernetes emulator.

The same Deployments the local backend runs drive InferenceServices: a create,
a canary, promote and rollback patch the resource in KServe's terms, the
records follow the status KServe's controller writes (here written by the
test, as in test_serving_kserve_backend.py: the emulator runs no controller).
"""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml
from kubernetes import client as k8s

from slmops.core.errors import Conflict
from slmops.core.jobstore import JobStore
from slmops.serving.backends.kserve import GROUP, PLURAL, VERSION, KServeBackend
from slmops.serving.deployments import Deployments, revision_id
from tests.unit.test_serving_kserve_backend import NS, _api_client, _Emulator, _report

NAME = "support"
M1, M2 = "s3://slmops-artifacts/onnx-model/m1", "s3://slmops-artifacts/onnx-model/m2"


@pytest.fixture()
def api():
    with _Emulator() as emulator:
        yield _api_client(emulator.url)


@pytest.fixture()
def deployments(api, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "kserve")
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor")
    return Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=backend, poll_s=0.2)


def _isvc(api) -> dict:
    return k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)


def _applied(api, storage_uri: str) -> bool:
    try:
        return _isvc(api)["spec"]["predictor"]["model"]["storageUri"] == storage_uri
    except k8s.ApiException:
        return False


def _ready(api, latest: int, split: dict[int, int] | None = None, failed: bool = False) -> None:
    """What KServe's controller reports: `latest`'s Knative revision ready (or failed) and the traffic."""
    split = split or {latest: 100}
    condition = {"type": "Ready", "status": "False" if failed else "True"}
    if failed:
        condition.update(reason="RevisionFailed", message="container exited with code 1")
    ready = latest - 1 if failed else latest
    _report(api, NAME, {
        "url": f"http://{NAME}.{NS}.example.com",
        "conditions": [condition, {**condition, "type": "PredictorReady"}],
        "components": {"predictor": {
            "latestCreatedRevision": f"{NAME}-predictor-{latest:05d}",
            "latestReadyRevision": f"{NAME}-predictor-{ready:05d}",
            "traffic": [{"revisionName": f"{NAME}-predictor-{n:05d}", "percent": pct, "latestRevision": n == latest}
                        for n, pct in split.items()],
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


async def test_a_canary_promote_and_rollback_as_inferenceservice_patches(deployments, api, tmp_path):
    deployments.resume()
    try:
        record = await deployments.create({"name": NAME, "model_uri": M1})
        assert record.state == "DEPLOYING" and record.config["backend"] == "KSERVE"
        await _until(lambda: _applied(api, M1))
        assert deployments.get(NAME).state == "DEPLOYING"  # nothing ready yet
        _ready(api, 1)
        await _until(lambda: _settled(deployments))
        assert deployments.get(NAME).result["url"] == f"http://{NAME}.{NS}.example.com"
        assert deployments.store.get(revision_id(NAME, 1)).state == "READY"
        manifest = tmp_path / "data" / "deployments" / NAME / "inferenceservice.yaml"
        assert yaml.safe_load(manifest.read_text())["spec"]["predictor"]["model"]["storageUri"] == M1

        await deployments.update(NAME, M2, [], 20)
        predictor = _isvc(api)["spec"]["predictor"]
        assert (predictor["model"]["storageUri"], predictor["canaryTrafficPercent"]) == (M2, 20)
        assert yaml.safe_load(manifest.read_text())["spec"]["predictor"]["canaryTrafficPercent"] == 20
        _ready(api, 2, {2: 20, 1: 80})
        await _until(lambda: _settled(deployments))
        assert deployments.get(NAME).result["traffic"] == {"1": 80, "2": 20}
        assert deployments.store.get(revision_id(NAME, 2)).result["traffic_percent"] == 20

        await deployments.promote(NAME)
        assert "canaryTrafficPercent" not in _isvc(api)["spec"]["predictor"]
        _ready(api, 2, {2: 100})
        await _until(lambda: _settled(deployments))
        await _until(lambda: deployments.store.get(revision_id(NAME, 1)).state == "RETIRED")

        await deployments.rollback(NAME)  # after a promotion: the revision served before, applied again
        isvc = _isvc(api)
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == M1
        assert isvc["metadata"]["annotations"]["serving.slmops.io/revision"] == "1"
        _ready(api, 1, {1: 100})
        await _until(lambda: _settled(deployments))
        assert deployments.store.get(revision_id(NAME, 2)).reason == "rolled back to revision 1"

        await deployments.delete(NAME)
        with pytest.raises(k8s.ApiException):
            _isvc(api)
    finally:
        await deployments.close()


async def test_a_failed_canary_leaves_the_deployment_serving_and_a_failed_first_revision_fails_it(
    deployments, api
):
    deployments.resume()
    try:
        await deployments.create({"name": NAME, "model_uri": M1})
        await _until(lambda: _applied(api, M1))
        _ready(api, 1)
        await _until(lambda: _settled(deployments))
        await deployments.update(NAME, M2, [], 30)
        _ready(api, 2, {1: 100}, failed=True)
        await _until(lambda: deployments.store.get(revision_id(NAME, 2)).state == "FAILED")
        assert "container exited" in deployments.store.get(revision_id(NAME, 2)).reason
        assert deployments.get(NAME).state == "READY"
        with pytest.raises(Conflict, match="no canary"):  # a failed canary is no canary
            await deployments.promote(NAME)
        await deployments.delete(NAME)

        await deployments.create({"name": NAME, "model_uri": M1})  # the name again: revision 3
        await _until(lambda: _applied(api, M1))
        _report(api, NAME, {"conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed",
                                            "message": "image pull failed"}]})  # fmt: skip
        await _until(lambda: deployments.get(NAME).state == "FAILED")
        assert "image pull failed" in deployments.get(NAME).reason
        assert deployments.get(NAME).config["serving"] == 3
    finally:
        await deployments.close()


async def test_an_unreachable_api_server_fails_the_deployment_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "kserve")
    backend = KServeBackend(_api_client("http://127.0.0.1:9"), namespace=NS, request_timeout_s=1.0)
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=backend, poll_s=0.2)
    deployments.resume()
    try:
        await deployments.create({"name": NAME, "model_uri": M1})
        await _until(lambda: deployments.get(NAME).state == "FAILED", 30)
        assert "cannot be reached" in deployments.get(NAME).reason
    finally:
        await deployments.close()
