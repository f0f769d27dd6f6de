"""The kserve backend and InferenceServices it does not own; the visibility of those it creates.

Against kmock's Kubernetes emulator (tests/unit/_kserve_emulator.py), with every write the backend sends
recorded.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from slmops.core.errors import AlreadyExists, Conflict
from slmops.core.grpc_errors import status_for
from slmops.serving.backends.kserve import KServeBackend
from tests.unit._kserve_emulator import (
    NS,
    Emulator,
    api_client,
    foreign_service,
    stored_object,
    student_revision,
)

NAME = "support-student"
WRITES = (
    "create_namespaced_custom_object",
    "patch_namespaced_custom_object",
    "delete_namespaced_custom_object",
)


@pytest.fixture()
def api():
    with Emulator() as emulator:
        yield api_client(emulator.url)


def _recording(backend: KServeBackend) -> list[str]:
    """The names of the write calls the backend sends from now on."""
    sent: list[str] = []
    objects = backend._objects()
    for name in WRITES:
        real = getattr(objects, name)

        def record(*args, _real=real, _name=name, **kwargs):
            sent.append(_name)
            return _real(*args, **kwargs)

        setattr(objects, name, record)
    return sent


@pytest.mark.reliability(
    "a deployment takes the name of an InferenceService someone else made in the namespace (no "
    "slmops.io/owner label, or another release's)",
    expected="ALREADY_EXISTS at create; no patch or delete is ever sent to it",
)
@pytest.mark.parametrize(
    "labels", [None, {"slmops.io/owner": "another-release"}], ids=["unlabelled", "other"]
)
def test_an_inference_service_not_ours_is_refused_and_never_written(api, labels, probe):
    before = foreign_service(api, NAME, labels)
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", owner="slmops-test")
    sent = _recording(backend)
    with pytest.raises(AlreadyExists, match="exists and is not managed by this slmops") as at_create:
        backend.check_owner(NAME)
    with pytest.raises(AlreadyExists, match=r"label slmops.io/owner"):
        backend.apply(NAME, student_revision(1))
    code, message = status_for(at_create.value, "/slmops.v1.ServingService/CreateDeployment")
    others = []
    for act in (backend.delete, backend.promote, backend.rollback, lambda n: backend.set_traffic(n, 100)):
        with pytest.raises(Conflict, match="exists and is not managed by this slmops"):
            act(NAME)
        others.append("FAILED_PRECONDITION")
    assert sent == []
    after = stored_object(api, NAME)
    assert after["spec"] == before["spec"] and after["metadata"]["labels"] == before["metadata"]["labels"]
    assert code.name == "ALREADY_EXISTS" and NAME in message
    probe.saw(
        f"{code.name} at create, FAILED_PRECONDITION on {len(others)} other calls; {len(sent)} writes sent"
    )


@pytest.mark.reliability(
    "the kserve backend creates an InferenceService with default settings",
    expected="it carries slmops.io/owner and networking.kserve.io/visibility: cluster-local (no external URL)",
)
def test_inference_services_are_cluster_local_and_owned_by_default(api, monkeypatch, probe):
    monkeypatch.delenv("SLMOPS_KSERVE_EXPOSE_EXTERNALLY", raising=False)
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", owner="slmops-test")
    backend.apply(NAME, student_revision(1))
    labels = stored_object(api, NAME)["metadata"]["labels"]
    assert labels["networking.kserve.io/visibility"] == "cluster-local"
    assert labels["slmops.io/owner"] == "slmops-test"
    # opting out: the next rollout drops the label
    monkeypatch.setenv("SLMOPS_KSERVE_EXPOSE_EXTERNALLY", "true")
    external = KServeBackend(api, namespace=NS, runtime="slmops-predictor", owner="slmops-test")
    assert (
        "networking.kserve.io/visibility"
        not in external.build(NAME, student_revision(2))["metadata"]["labels"]
    )
    external.apply(NAME, student_revision(2))
    assert "networking.kserve.io/visibility" not in stored_object(api, NAME)["metadata"]["labels"]
    probe.saw(f"labels {sorted(k for k in labels if '/' in k)}; opt-out removes the visibility label")


def test_a_patch_names_the_uid_it_read(api):
    """A name whose object was replaced between the read and the write is not written over."""
    backend = KServeBackend(api, namespace=NS, runtime="slmops-predictor", owner="slmops-test")
    backend.apply(NAME, student_revision(1))
    objects = backend._objects()
    objects.patch_namespaced_custom_object(  # what the API server assigns (the emulator does not)
        "serving.kserve.io", "v1beta1", NS, "inferenceservices", NAME, {"metadata": {"uid": "uid-1"}}
    )
    sent: list[dict] = []
    real = objects.patch_namespaced_custom_object
    objects.patch_namespaced_custom_object = lambda *a, **kw: sent.append(a[-1]) or real(*a, **kw)
    backend.apply(NAME, student_revision(2))
    assert isinstance(objects, k8s.CustomObjectsApi)
    assert sent and sent[0]["metadata"]["uid"] == "uid-1"
