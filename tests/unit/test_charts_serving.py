"""The serving parts of the Helm chart and the kustomize manifests, against what the serving service supports.

The chart renders with the real helm (see test_charts.py). The serving
service's settings as rendered are given to the service's own validation and
backend factory: whichever backend the chart selects, the service accepts it.
The predictor runtimes are named per release and validated against KServe's
CRDs (scripts/check_charts.py).
"""

from __future__ import annotations

import pytest
import yaml

from slmops.serving import deployments, validation
from slmops.serving.backends.kserve import KServeBackend
from tests.unit._charts import ROOT, SERVICES, check, container_env, one, render

PREDICTOR_ARGS = ["--model-dir=/mnt/models", "--name={{.Name}}", "--http-port=8080", "--host=0.0.0.0",
                  "--grpc-port=8081"]  # fmt: skip
READINESS = {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 5, "failureThreshold": 3}
RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
# Kinds without a namespace: two releases must never render the same one.
CLUSTER_SCOPED = {"ClusterServingRuntime", "ClusterRole", "ClusterRoleBinding", "Namespace",
                  "PriorityClass", "StorageClass", "CustomResourceDefinition"}  # fmt: skip


@pytest.fixture(scope="module")
def default_docs(helm):
    return render()


@pytest.fixture(scope="module")
def all_on_docs(helm):
    return check.helm_template([check.ALL_ON_VALUES])


@pytest.fixture(scope="module")
def kustomized():
    return {path.name: check.kustomize_build(path) for path in check.kustomize_dirs()}


def runtimes(docs) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in RUNTIME_KINDS}


def _serving_env(docs, prefix: str = "slmops") -> dict[str, str]:
    pod = one(docs, "Deployment", f"{prefix}-serving")["spec"]["template"]["spec"]
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
        assert (built.namespace, built.runtime) == (
            env["SLMOPS_KSERVE_NAMESPACE"],
            env["SLMOPS_KSERVE_RUNTIME"],
        )
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
        docs = render(f"serving.backend={backend}", "serving.kserve.runtime.gpu.enabled=true")
        assert _accepts(_serving_env(docs), monkeypatch) == backend.upper()
        # The kserve parts render only for the kserve backend.
        assert bool(runtimes(docs)) == (backend == "kserve")


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


# --- the serving service's KServe settings ---------------------------------


@pytest.mark.parametrize("release,fullname", [("slmops", "slmops"), ("team-a", "team-a-slmops")])
def test_the_serving_service_names_this_releases_runtimes_and_owner(helm, release, fullname):
    docs = render("serving.kserve.runtime.gpu.enabled=true", release=release)
    env = _serving_env(docs, fullname)
    found = runtimes(docs)
    assert env["SLMOPS_KSERVE_RUNTIME"] == f"{fullname}-predictor"
    assert env["SLMOPS_KSERVE_RUNTIME_GPU"] == f"{fullname}-predictor-cuda"
    assert set(found) == {env["SLMOPS_KSERVE_RUNTIME"], env["SLMOPS_KSERVE_RUNTIME_GPU"]}
    assert env["SLMOPS_KSERVE_OWNER"] == fullname
    assert env["SLMOPS_KSERVE_DEPLOYMENT_MODE"] == "Standard"
    assert env["SLMOPS_KSERVE_NAMESPACE"] == "slmops"
    # The other services do not manage InferenceServices.
    for svc in set(SERVICES) - {"serving"}:
        other = container_env(
            one(docs, "Deployment", f"{fullname}-{svc}")["spec"]["template"]["spec"]["containers"][0]
        )
        assert not {"SLMOPS_KSERVE_OWNER", "SLMOPS_KSERVE_RUNTIME_GPU"} & set(other), svc


def test_without_gpu_serving_the_gpu_runtime_setting_is_empty(default_docs):
    env = _serving_env(default_docs)
    assert env["SLMOPS_KSERVE_RUNTIME_GPU"] == ""
    assert set(runtimes(default_docs)) == {env["SLMOPS_KSERVE_RUNTIME"]} == {"slmops-predictor"}


def test_the_deployment_mode_is_a_value_knative_or_standard(helm):
    schema = yaml.safe_load((ROOT / "charts/slmops/values.schema.json").read_text())
    kserve = schema["properties"]["serving"]["properties"]["kserve"]["properties"]
    assert sorted(kserve["deploymentMode"]["enum"]) == ["Knative", "Standard"]
    assert (
        _serving_env(render("serving.kserve.deploymentMode=Knative"))["SLMOPS_KSERVE_DEPLOYMENT_MODE"]
        == "Knative"
    )
    with pytest.raises(check.ToolError, match="deploymentMode"):
        render("serving.kserve.deploymentMode=Serverless")  # KServe's old name: refused, not passed on


def test_two_releases_in_one_namespace_share_no_object(helm):
    """A second release installs: no name it renders is already taken by the first, cluster-wide ones included."""
    for kind in RUNTIME_KINDS:
        docs = {rel: render("serving.kserve.runtime.gpu.enabled=true", f"serving.kserve.runtime.kind={kind}",
                            release=rel) for rel in ("alpha", "beta")}  # fmt: skip

        def identities(rendered):
            return {
                (d["kind"], "" if d["kind"] in CLUSTER_SCOPED else d["metadata"].get("namespace", "slmops"),
                 d["metadata"]["name"])
                for d in rendered
            }  # fmt: skip

        first, second = identities(docs["alpha"]), identities(docs["beta"])
        assert first and second and not first & second, first & second
        for rel in ("alpha", "beta"):
            names = {d["metadata"]["name"] for d in docs[rel] if d["kind"] == kind}
            assert names == {f"{rel}-slmops-predictor", f"{rel}-slmops-predictor-cuda"}
            env = _serving_env(docs[rel], f"{rel}-slmops")
            assert {env["SLMOPS_KSERVE_RUNTIME"], env["SLMOPS_KSERVE_RUNTIME_GPU"]} == names


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_runtimes_are_namespaced_in_the_inferenceservices_namespace_or_cluster_wide(helm, kind):
    docs = check.helm_template([check.ALL_ON_VALUES], [f"serving.kserve.runtime.kind={kind}"])
    found = runtimes(docs)
    assert set(found) == {"slmops-predictor", "slmops-predictor-cuda"}
    for runtime in found.values():
        assert runtime["kind"] == kind
        expected = "slmops-serving" if kind == "ServingRuntime" else None
        assert runtime["metadata"].get("namespace") == expected
    # Both pass KServe's own CRD schema.
    assert check.validate_manifests(found.values()) == []


def test_an_existing_runtime_can_be_named_instead(helm):
    with pytest.raises(check.ToolError, match="existingName is required"):
        render("serving.kserve.runtime.create=false")
    docs = render(
        "serving.kserve.runtime.create=false", "serving.kserve.runtime.existingName=slmops-predictor-shared"
    )
    assert not runtimes(docs)
    assert _serving_env(docs)["SLMOPS_KSERVE_RUNTIME"] == "slmops-predictor-shared"


# --- the runtimes ------------------------------------------------------------


@pytest.mark.parametrize("source", ["chart", "k8s/cluster"])
def test_serving_runtime_runs_the_predictor_on_all_interfaces_with_a_readiness_probe(default_docs, source):
    if source == "chart":
        runtime = one(default_docs, "ServingRuntime", "slmops-predictor")
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
    body = KServeBackend(namespace="slmops", runtime=runtime["metadata"]["name"]).build(
        "student", deployments.Revision(1, "s3://m/x", "s3://m/x"))  # fmt: skip
    model = body["spec"]["predictor"]["model"]
    assert (model["runtime"], model["modelFormat"]["name"]) == (runtime["metadata"]["name"], "onnx-genai")
    if source == "chart":
        assert container["image"] == "ghcr.io/slmops/slmops-predictor:0.1.0"
        assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_the_gpu_runtime_runs_the_cuda_image_on_a_gpu(helm, tmp_path):
    gpu_values = {"enabled": True, "gpus": 2, "image": {"tag": "0.2.0-cuda"},
                  "nodeSelector": {"nvidia.com/gpu.present": "true"}}  # fmt: skip
    values = tmp_path / "gpu.yaml"
    values.write_text(yaml.safe_dump({"serving": {"kserve": {"runtime": {"gpu": gpu_values}}}}))
    docs = render(values=[values])
    cpu, gpu = (
        one(docs, "ServingRuntime", "slmops-predictor"),
        one(docs, "ServingRuntime", "slmops-predictor-cuda"),
    )
    (container,) = gpu["spec"]["containers"]
    assert container["image"] == "ghcr.io/slmops/slmops-predictor-cuda:0.2.0-cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["limits"]["memory"] == "16Gi"  # the values' limits kept beside the GPU
    assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # The same predictor, flags and probe as the CPU runtime.
    (cpu_container,) = cpu["spec"]["containers"]
    for key in ("command", "args", "ports", "readinessProbe", "securityContext"):
        assert container[key] == cpu_container[key], key
    # Only an InferenceService that names it lands on a GPU: KServe never auto-selects it.
    assert [f["autoSelect"] for f in gpu["spec"]["supportedModelFormats"]] == [False, False]
    assert {f["name"] for f in gpu["spec"]["supportedModelFormats"]} == {
        f["name"] for f in cpu["spec"]["supportedModelFormats"]}  # fmt: skip
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert check.validate_manifests([cpu, gpu]) == []


@pytest.mark.parametrize("fixture,secret", [("default_docs", "slmops-predictor-key"),
                                            ("all_on_docs", "slmops-predictor-api-key")])  # fmt: skip
def test_the_predictor_api_key_comes_from_a_mounted_secret(request, fixture, secret):
    docs = request.getfixturevalue(fixture)
    names = ["slmops-predictor"] + (["slmops-predictor-cuda"] if fixture == "all_on_docs" else [])
    for name in names:
        runtime = one(docs, "ServingRuntime", name)["spec"]
        (container,) = runtime["containers"]
        assert "--api-key-file=/var/run/secrets/slmops-predictor/api-key" in container["args"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "api-key")
        assert mount == {
            "name": "api-key",
            "mountPath": "/var/run/secrets/slmops-predictor",
            "readOnly": True,
        }
        volume = next(v for v in runtime["volumes"] if v["name"] == "api-key")
        assert volume["secret"]["secretName"] == secret


@pytest.mark.parametrize("fixture,namespace", [("default_docs", "slmops"), ("all_on_docs", "slmops-serving")])
def test_rbac_lets_the_serving_service_manage_inferenceservices(request, fixture, namespace):
    docs = request.getfixturevalue(fixture)
    role = one(docs, "Role", "slmops-serving")
    assert role["metadata"]["namespace"] == namespace
    rule = next(r for r in role["rules"] if "inferenceservices" in r["resources"])
    assert rule["apiGroups"] == ["serving.kserve.io"]
    # The exact verbs follow the backend's calls (test_charts_contract.py).
    assert {"get", "create", "patch", "delete"} <= set(rule["verbs"])
    binding = one(docs, "RoleBinding", "slmops-serving")
    assert binding["roleRef"]["name"] == "slmops-serving"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "slmops-serving", "namespace": "slmops"}
    ]
    pod = one(docs, "Deployment", "slmops-serving")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "slmops-serving"
    assert pod["automountServiceAccountToken"] is True
    assert _serving_env(docs)["SLMOPS_KSERVE_NAMESPACE"] == namespace
    # The runtimes live where the InferenceServices are.
    assert {r["metadata"]["namespace"] for r in runtimes(docs).values()} == {namespace}
    # The other services have no API access.
    for svc in set(SERVICES) - {"serving"}:
        other = one(docs, "Deployment", f"slmops-{svc}")["spec"]["template"]["spec"]
        assert other["serviceAccountName"] == "slmops" and other["automountServiceAccountToken"] is False
