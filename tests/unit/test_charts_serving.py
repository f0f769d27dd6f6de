"""The serving parts of the Helm chart and the kustomize manifests, against what the serving service supports.

The chart renders with the real helm (see test_charts.py). The serving
service's settings as rendered are given to the service's own validation and
backend factory: whichever backend the chart selects, the service accepts it.
"""

from __future__ import annotations

import pytest
import yaml

from slmops.serving import deployments, validation
from slmops.serving.backends.kserve import KServeBackend
from tests.unit.test_charts import ROOT, SERVICES, check, container_env, install_helm, one

PREDICTOR_ARGS = ["--model-dir=/mnt/models", "--name={{.Name}}", "--http-port=8080", "--host=0.0.0.0",
                  "--grpc-port=8081"]  # fmt: skip
READINESS = {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 5, "failureThreshold": 3}


@pytest.fixture(scope="module")
def helm():
    try:
        return install_helm.ensure_helm()
    except SystemExit as exc:
        pytest.fail(f"helm could not be installed: {exc}")


@pytest.fixture(scope="module")
def default_docs(helm):
    return check.helm_template()


@pytest.fixture(scope="module")
def all_on_docs(helm):
    return check.helm_template([check.ALL_ON_VALUES])


@pytest.fixture(scope="module")
def kustomized():
    return {path.name: check.kustomize_build(path) for path in check.kustomize_dirs()}


def _serving_env(docs) -> dict[str, str]:
    pod = one(docs, "Deployment", "slmops-serving")["spec"]["template"]["spec"]
    return container_env(pod["containers"][0])


def _accepts(env: dict[str, str], monkeypatch) -> str:
    """The backend the service runs with these settings; it builds it and validates a spec against it."""
    for key, value in env.items():
        if key.startswith("SLMOPS_") and isinstance(value, str):
            monkeypatch.setenv(key, value)
    backend = validation.configured_backend()
    assert backend in validation.BACKENDS
    built = deployments.make_backend()
    uri = "s3://models/student-int4" if backend == "KSERVE" else ""
    if backend == "KSERVE":
        assert isinstance(built, KServeBackend)
        assert (built.namespace, built.runtime) == (env["SLMOPS_KSERVE_NAMESPACE"], env["SLMOPS_KSERVE_RUNTIME"])
        config = validation.validate({"name": "student", "model_uri": uri})
        assert (config["backend"], config["storage_uri"]) == ("KSERVE", uri)
    return backend


def test_the_charts_default_backend_is_one_the_service_accepts(default_docs, monkeypatch, tmp_path):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    assert _accepts(_serving_env(default_docs), monkeypatch) == "KSERVE"


def test_every_backend_the_chart_offers_is_accepted(helm, monkeypatch, tmp_path):
    schema = (ROOT / "charts/slmops/values.schema.json").read_text()
    offered = yaml.safe_load(schema)["properties"]["serving"]["properties"]["backend"]["enum"]
    assert sorted(offered) == ["kserve", "local"]
    for backend in offered:
        monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / backend))
        docs = check.helm_template(set_values=[f"serving.backend={backend}"])
        assert _accepts(_serving_env(docs), monkeypatch) == backend.upper()
        # The kserve parts render only for the kserve backend.
        assert bool([d for d in docs if d and d.get("kind") == "ClusterServingRuntime"]) == (backend == "kserve")


def test_kustomize_selects_a_backend_the_service_accepts(kustomized, monkeypatch, tmp_path):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    for name, docs in kustomized.items():
        if any(d.get("kind") == "Deployment" and d["metadata"]["name"].endswith("serving") for d in docs):
            serving = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"].endswith(
                "serving"))  # fmt: skip
            container = serving["spec"]["template"]["spec"]["containers"][0]
            env = container_env(container)
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                config_map = next((d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == ref),
                                  None)  # fmt: skip
                env = {**(config_map or {}).get("data", {}), **env}
            # The pod's own namespace, as the downward API gives it.
            env = {k: "slmops" if isinstance(v, dict) and "fieldRef" in v else v for k, v in env.items()}
            env.setdefault("SLMOPS_KSERVE_NAMESPACE", "default")
            env.setdefault("SLMOPS_KSERVE_RUNTIME", "slmops-predictor")
            assert _accepts(env, monkeypatch) in ("KSERVE", "LOCAL"), name


@pytest.mark.parametrize("source", ["chart", "k8s/cluster"])
def test_serving_runtime_runs_the_predictor_on_all_interfaces_with_a_readiness_probe(default_docs, source):
    if source == "chart":
        runtime = one(default_docs, "ClusterServingRuntime", "slmops-predictor")
    else:
        docs = list(yaml.safe_load_all((ROOT / "k8s/cluster/serving-runtime.yaml").read_text()))
        runtime = next(d for d in docs if d and d.get("kind") == "ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["command"] == ["python", "-m", "slmops.predictor"]
    assert container["args"][: len(PREDICTOR_ARGS)] == PREDICTOR_ARGS
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"] == READINESS
    formats = {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}
    assert formats["onnx-genai"]["autoSelect"] is True and "huggingface" in formats
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    # The kserve backend's InferenceServices name this runtime and its model format.
    body = KServeBackend(namespace="slmops").build(
        "student", deployments.Revision(1, "s3://m/x", "s3://m/x"))  # fmt: skip
    model = body["spec"]["predictor"]["model"]
    assert (model["runtime"], model["modelFormat"]["name"]) == (runtime["metadata"]["name"], "onnx-genai")
    if source == "chart":
        assert container["image"] == "ghcr.io/slmops/slmops-predictor:0.1.0"
        assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"


def test_the_predictor_api_key_comes_from_a_mounted_secret(default_docs, all_on_docs):
    (plain,) = one(default_docs, "ClusterServingRuntime", "slmops-predictor")["spec"]["containers"]
    assert not any(a.startswith("--api-key-file") for a in plain["args"])
    runtime = one(all_on_docs, "ClusterServingRuntime", "slmops-predictor-prod")["spec"]
    (container,) = runtime["containers"]
    assert "--api-key-file=/var/run/secrets/slmops-predictor/api-key" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-key")
    assert mount == {"name": "api-key", "mountPath": "/var/run/secrets/slmops-predictor", "readOnly": True}
    volume = next(v for v in runtime["volumes"] if v["name"] == "api-key")
    assert volume["secret"]["secretName"] == "slmops-predictor-api-key"


@pytest.mark.parametrize(
    "fixture,namespace", [("default_docs", "slmops"), ("all_on_docs", "slmops-serving")]
)
def test_rbac_lets_the_serving_service_manage_inferenceservices(request, fixture, namespace):
    docs = request.getfixturevalue(fixture)
    role = one(docs, "Role", "slmops-serving")
    assert role["metadata"]["namespace"] == namespace
    rule = next(r for r in role["rules"] if "inferenceservices" in r["resources"])
    assert rule["apiGroups"] == ["serving.kserve.io"]
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(rule["verbs"])
    binding = one(docs, "RoleBinding", "slmops-serving")
    assert binding["roleRef"]["name"] == "slmops-serving"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "slmops-serving", "namespace": "slmops"}
    ]
    pod = one(docs, "Deployment", "slmops-serving")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "slmops-serving"
    assert pod["automountServiceAccountToken"] is True
    assert _serving_env(docs)["SLMOPS_KSERVE_NAMESPACE"] == namespace
    # The other services have no API access.
    for svc in SERVICES.keys() - {"serving"}:
        other = one(docs, "Deployment", f"slmops-{svc}")["spec"]["template"]["spec"]
        assert other["serviceAccountName"] == "slmops" and other["automountServiceAccountToken"] is False
