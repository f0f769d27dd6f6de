"""What the kserve backend writes, held against what the project documents and
deploys: the example InferenceService and the ServingRuntime under k8s/, KServe's
CRD (the check scripts/check_charts.py runs), and the kubectl rollbacks of
docs/rollouts.md, run against kmock's emulator (tests/unit/_kserve_emulator.py).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from slmops.core.errors import Conflict
from slmops.serving.backends import Revision
from slmops.serving.backends.kserve import KServeBackend
from tests.unit._kserve_emulator import (
    NS,
    Emulator,
    api_client,
    knative_status,
    stored_object,
    student_revision,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster():
    with Emulator() as emulator:
        yield emulator


@pytest.fixture()
def api(cluster) -> k8s.ApiClient:
    return api_client(cluster.url)


@pytest.fixture()
def knative(api) -> KServeBackend:
    return KServeBackend(
        api, namespace=NS, runtime="slmops-predictor", deployment_mode="Knative", owner="slmops-test"
    )


def test_built_inference_service_matches_the_project_manifests(monkeypatch):
    example = yaml.safe_load((ROOT / "k8s/examples/inferenceservice-onnx.yaml").read_text())
    runtime = yaml.safe_load((ROOT / "k8s/cluster/serving-runtime.yaml").read_text())
    built = KServeBackend(k8s.ApiClient(), namespace=NS, runtime="slmops-predictor", service_account="sa",
                          deployment_mode="Knative").build("support-student", student_revision(1))  # fmt: skip

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
        "support-student", student_revision(2, percent=10)
    )
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert check_charts.crd_problems(built) == [] and check_charts.crd_problems(canary) == []


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
        check(stored_object(api, name))

    check(backend.build(name, Revision(1, "m", "s3://b/m1", cpus=0.5, memory="3Gi")))
    backend.apply(name, Revision(1, "m", "s3://b/m1", cpus=0.5, memory="3Gi"))
    stored()
    check(backend.build(name, Revision(2, "m", "pvc://claim/m2", gpus=2)))
    if mode == "Knative":
        backend.apply(name, student_revision(2, percent=10))
        stored()
        knative_status(api, name, 2, {2: 10, 1: 90})  # the status as KServe writes it fits the CRD too
        stored()
        backend.promote(name)
        stored()
        backend.apply(name, student_revision(3, percent=20))
        backend.rollback(name)
        stored()
    else:
        backend.apply(name, student_revision(2))
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
    knative.apply(name, student_revision(1))
    knative.apply(name, student_revision(2, percent=10))
    run(before_promotion)
    assert stored_object(api, name)["spec"]["predictor"]["canaryTrafficPercent"] == 0

    knative.promote(name)
    assert stored_object(api, name)["metadata"]["annotations"]["slmops.io/rolled-out-revisions"] == "1,2"
    run(after_promotion)
    stored = stored_object(api, name)
    assert stored["spec"]["predictor"]["model"]["storageUri"] == student_revision(1).storage_uri
    annotations = stored["metadata"]["annotations"]
    assert (annotations["serving.slmops.io/revision"], annotations["serving.slmops.io/rolled-out-revision"],
            annotations["slmops.io/rolled-out-revisions"]) == ("1", "1", "1")  # fmt: skip
    # The service reads the result as revision 1 again, and knows there is nothing earlier.
    knative_status(api, name, 1, {1: 100})
    assert knative.status(name).traffic == {1: 100}
    with pytest.raises(Conflict, match="no earlier revision"):
        knative.rollback(name)
