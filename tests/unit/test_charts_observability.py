"""Metrics, monitors, the collector and the NetworkPolicies around them, rendered with the real helm.

The Prometheus Operator's monitors are checked for what Prometheus needs to
find targets: a selector that picks the right Services or pods and a port
those carry. The NetworkPolicies are evaluated the way the API server defines
them (a pod selected by any policy takes only what some policy admits).
"""

from __future__ import annotations

import pytest
import yaml

from slmops.serving import deployments
from slmops.serving.backends.kserve import KServeBackend
from tests.unit._charts import (
    SERVICES,
    STORE,
    check,
    container_env,
    find,
    one,
    reachable,
    render,
    selecting,
    selects,
)

NS = "slmops"
MONITORS_ON = ["metrics.serviceMonitor.enabled=true", "metrics.podMonitor.predictors=true",
               "metrics.podMonitor.ray=true"]  # fmt: skip
RAY_METRICS = 8080  # KubeRay's `metrics` port on every Ray container
KNATIVE_QUEUE_PORT = 8012  # Knative's queue-proxy, in front of the predictor in Knative mode


@pytest.fixture(scope="module")
def default_docs(helm):
    return render()


@pytest.fixture(scope="module")
def monitored_docs(helm):
    return render(*MONITORS_ON)


@pytest.fixture(scope="module")
def all_on_docs(helm):
    return check.helm_template([check.ALL_ON_VALUES])


def pod(namespace: str, **labels: str) -> dict:
    return {"namespace": namespace, "labels": labels}


def release_pods(docs) -> dict[str, dict]:
    """Service and Ray pods as NetworkPolicies see them (KubeRay adds ray.io/cluster)."""
    pods = {
        svc: {"namespace": NS, "labels": one(docs, "Deployment", f"slmops-{svc}")["spec"]["template"]["metadata"]["labels"]}
        for svc in SERVICES
    }  # fmt: skip
    ray = one(docs, "RayCluster", "slmops-ray")["spec"]
    kuberay = {"ray.io/cluster": "slmops-ray"}
    for name, template in (("ray-head", ray["headGroupSpec"]["template"]),
                           ("ray-worker", ray["workerGroupSpecs"][0]["template"])):  # fmt: skip
        pods[name] = {"namespace": NS, "labels": {**template["metadata"]["labels"], **kuberay}}
    return pods


def predictor_pod(docs, namespace: str, isvc: str = "student") -> dict:
    """A predictor pod of an InferenceService the serving service builds with the rendered settings:
    KServe copies the InferenceService's labels onto its pods (pkg/controller/v1beta1/inferenceservice/
    components/predictor.go) and adds its own."""
    env = container_env(
        one(docs, "Deployment", "slmops-serving")["spec"]["template"]["spec"]["containers"][0]
    )
    backend = KServeBackend(
        namespace=namespace, runtime=env["SLMOPS_KSERVE_RUNTIME"], owner=env["SLMOPS_KSERVE_OWNER"]
    )
    body = backend.build(isvc, deployments.Revision(1, "s3://m/x", "s3://m/x"))
    labels = body["metadata"]["labels"]
    assert labels["slmops.io/owner"] == env["SLMOPS_KSERVE_OWNER"]
    return pod(namespace, **labels, **{"serving.kserve.io/inferenceservice": isvc, "component": "predictor"})


# --- metrics on every service ------------------------------------------------


def test_every_service_serves_metrics_on_a_named_port(default_docs):
    for svc, grpc_port in SERVICES.items():
        deployment = one(default_docs, "Deployment", f"slmops-{svc}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container_env(container)["SLMOPS_METRICS_PORT"] == "9464", svc
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": 9464}, svc
        service = one(default_docs, "Service", f"slmops-{svc}")
        by_name = {p["name"]: p for p in service["spec"]["ports"]}
        assert by_name["metrics"]["port"] == 9464 and by_name["metrics"]["targetPort"] == "metrics", svc
        assert by_name["grpc"]["port"] == grpc_port


def test_the_metrics_port_is_a_value_and_can_be_turned_off(helm):
    moved = render("metrics.port=9100")
    (container,) = one(moved, "Deployment", "slmops-training")["spec"]["template"]["spec"]["containers"]
    assert container_env(container)["SLMOPS_METRICS_PORT"] == "9100"
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    off = render("metrics.enabled=false")
    (container,) = one(off, "Deployment", "slmops-training")["spec"]["template"]["spec"]["containers"]
    assert "SLMOPS_METRICS_PORT" not in container_env(container)
    assert [p["name"] for p in container["ports"]] == ["grpc"]
    assert [p["name"] for p in one(off, "Service", "slmops-training")["spec"]["ports"]] == ["grpc"]
    with pytest.raises(check.ToolError, match="needs metrics.enabled"):
        render("metrics.enabled=false", "metrics.serviceMonitor.enabled=true")


# --- monitors -----------------------------------------------------------------


def test_no_monitor_is_rendered_by_default(default_docs):
    """Without the Prometheus Operator a monitor could not even be installed."""
    assert not find(default_docs, "ServiceMonitor") and not find(default_docs, "PodMonitor")


def test_the_servicemonitor_selects_exactly_the_services_and_their_metrics_port(monitored_docs):
    (monitor,) = find(monitored_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"].get("namespace", NS) == NS  # the Services' own namespace
    selected = [
        s
        for s in find(monitored_docs, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in selected} == {f"slmops-{svc}" for svc in SERVICES}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, service["metadata"][
                "name"
            ]
    # The monitor's job label exists on every selected Service.
    assert all(monitor["spec"]["jobLabel"] in s["metadata"]["labels"] for s in selected)


def test_monitor_labels_let_a_prometheus_pick_them(helm, tmp_path):
    values = tmp_path / "labels.yaml"
    values.write_text(yaml.safe_dump({"metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "15s"},
        "podMonitor": {"ray": True, "predictors": True, "labels": {"release": "kps"}, "interval": ""}}}))  # fmt: skip
    docs = render(values=[values])
    monitors = find(docs, "ServiceMonitor") + find(docs, "PodMonitor")
    assert len(monitors) == 3
    assert all(m["metadata"]["labels"]["release"] == "kps" for m in monitors)
    assert find(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["interval"] == "15s"
    assert all(
        "interval" not in e for m in find(docs, "PodMonitor") for e in m["spec"]["podMetricsEndpoints"]
    )


def test_the_ray_podmonitor_scrapes_head_and_workers_on_their_metrics_port(monitored_docs):
    monitor = one(monitored_docs, "PodMonitor", "slmops-ray")
    pods = release_pods(monitored_docs)
    for name in ("ray-head", "ray-worker"):
        assert selects(monitor["spec"]["selector"], pods[name]["labels"]), name
    for svc in SERVICES:
        assert not selects(monitor["spec"]["selector"], pods[svc]["labels"]), svc
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    # The head declares it; KubeRay adds `metrics: 8080` to any Ray container without one
    # (ray-operator/controllers/ray/common/pod.go), so the workers carry it too.
    head = one(monitored_docs, "RayCluster", "slmops-ray")["spec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "metrics", "containerPort": RAY_METRICS} in head["containers"][0]["ports"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"], "targetLabel": "ray_io_cluster",
            "action": "replace"} in endpoint["relabelings"]  # fmt: skip


@pytest.mark.parametrize("fixture,namespace", [("monitored_docs", NS), ("all_on_docs", "slmops-serving")])
def test_the_predictor_podmonitor_scrapes_this_releases_predictors(request, fixture, namespace):
    docs = request.getfixturevalue(fixture)
    monitor = one(docs, "PodMonitor", "slmops-predictors")
    assert (
        monitor["metadata"]["namespace"] == namespace
    )  # beside the pods: no cross-namespace selector needed
    assert selects(monitor["spec"]["selector"], predictor_pod(docs, namespace)["labels"])
    stranger = predictor_pod(docs, namespace)
    stranger["labels"]["slmops.io/owner"] = "another-release"
    assert not selects(monitor["spec"]["selector"], stranger["labels"])
    # The predictor serves /metrics on the runtime's one container port.
    (runtime_port,) = one(docs, "ServingRuntime", "slmops-predictor")["spec"]["containers"][0]["ports"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["portNumber"], endpoint["path"]) == (runtime_port["containerPort"], "/metrics")


# --- the collector ------------------------------------------------------------


def _collector_config(docs) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "slmops-otel-collector")["data"]["config.yaml"])


def test_the_collector_logs_with_debug_until_a_backend_is_named(default_docs):
    config = _collector_config(default_docs)
    assert config["exporters"] == {"debug": {"verbosity": "basic"}}
    for pipeline in ("traces", "metrics"):
        assert config["service"]["pipelines"][pipeline]["exporters"] == ["debug"]


def test_exporter_values_flow_into_the_collector_config(helm, tmp_path):
    tempo = {"endpoint": "tempo-distributor.observability.svc:4317", "tls": {"insecure": True}}
    prometheus = {"endpoint": "http://prometheus-operated.monitoring.svc:9090/api/v1/otlp"}
    values = tmp_path / "otel.yaml"
    values.write_text(yaml.safe_dump({"otelCollector": {
        "exporters": {"debug": {}, "otlp/tempo": tempo, "otlphttp/prometheus": prometheus},
        "tracesExporters": ["otlp/tempo"], "metricsExporters": ["otlphttp/prometheus", "debug"]}}))  # fmt: skip
    docs = render(values=[values])
    config = _collector_config(docs)
    assert config["exporters"]["otlp/tempo"] == tempo
    assert config["exporters"]["otlphttp/prometheus"] == prometheus
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["otlp/tempo"]
    assert config["service"]["pipelines"]["metrics"]["exporters"] == ["otlphttp/prometheus", "debug"]
    # The pods restart when the config changes.
    default = one(render(), "Deployment", "slmops-otel-collector")["spec"]["template"]["metadata"][
        "annotations"
    ]
    changed = one(docs, "Deployment", "slmops-otel-collector")["spec"]["template"]["metadata"]["annotations"]
    assert default["checksum/config"] != changed["checksum/config"]


@pytest.mark.parametrize("key", ["pipelineExporters", "tracesExporters", "metricsExporters"])
def test_a_pipeline_naming_an_undefined_exporter_fails(helm, key):
    with pytest.raises(check.ToolError, match=f'otelCollector.{key} names "otlp/nowhere"'):
        render(f"otelCollector.{key}={{otlp/nowhere}}")


def test_a_collector_with_replicas_has_a_disruption_budget(helm, default_docs):
    assert not find(default_docs, "PodDisruptionBudget", "slmops-otel-collector")
    docs = render("otelCollector.replicas=3")
    budget = one(docs, "PodDisruptionBudget", "slmops-otel-collector")
    pods = one(docs, "Deployment", "slmops-otel-collector")["spec"]["template"]["metadata"]["labels"]
    assert selects(budget["spec"]["selector"], pods)
    assert budget["spec"]["maxUnavailable"] == 1


# --- NetworkPolicies -----------------------------------------------------------


def test_the_monitoring_namespace_reaches_the_metrics_ports_and_nothing_else(monitored_docs):
    policies = find(monitored_docs, "NetworkPolicy")
    pods = release_pods(monitored_docs)
    prometheus = pod("monitoring", **{"app.kubernetes.io/name": "prometheus"})
    stranger = pod("default", app="curious")
    for name in ("ray-head", "ray-worker"):
        assert reachable(policies, pods[name], prometheus, RAY_METRICS), name
        assert not reachable(policies, pods[name], stranger, RAY_METRICS), name
        for port in (6379, 8265, 10001):  # GCS, dashboard and Jobs API, client
            assert not reachable(policies, pods[name], prometheus, port), (name, port)
    for svc, grpc_port in SERVICES.items():
        assert reachable(policies, pods[svc], prometheus, 9464), svc
        assert not reachable(policies, pods[svc], stranger, 9464), svc
        assert not reachable(policies, pods[svc], prometheus, grpc_port), svc
        assert reachable(policies, pods[svc], pods["pipeline"], grpc_port), svc


def test_without_a_monitoring_namespace_no_one_outside_scrapes(helm):
    docs = render("networkPolicy.monitoringNamespace=")
    policies = find(docs, "NetworkPolicy")
    pods = release_pods(docs)
    prometheus = pod("monitoring", app="prometheus")
    assert not reachable(policies, pods["ray-head"], prometheus, RAY_METRICS)
    assert not reachable(policies, pods["training"], prometheus, 9464)


def _unreachable_predictors(docs, namespace: str, gateways: list[str]) -> list[str]:
    """Predictor pods a NetworkPolicy selects without admitting Knative Serving and the gateways."""
    policies = find(docs, "NetworkPolicy")
    target = predictor_pod(docs, namespace)
    sources = {"knative activator": pod("knative-serving", app="activator"),
               **{f"gateway in {g}": pod(g, app="ingressgateway") for g in gateways}}  # fmt: skip
    return [
        f"{name} cannot reach port {port}"
        for name, source in sources.items()
        for port in (KNATIVE_QUEUE_PORT, 8080)
        if not reachable(policies, target, source, port)
    ]


@pytest.mark.parametrize(
    "values,namespace,gateways",
    [
        ([], NS, ["istio-system"]),
        ([check.ALL_ON_VALUES], "slmops-serving", ["istio-system", "istio-ingress"]),
    ],
    ids=["default", "all-on"],
)
def test_no_policy_cuts_predictors_off_from_knative_or_the_gateways(helm, values, namespace, gateways):
    docs = check.helm_template(values, [] if values else [STORE])
    assert _unreachable_predictors(docs, namespace, gateways) == []


def test_the_predictor_policy_admits_knative_gateways_the_release_and_monitoring(helm):
    docs = render(
        "networkPolicy.predictors.enabled=true", "networkPolicy.predictors.gatewayNamespaces={kourier-system}"
    )
    policies = find(docs, "NetworkPolicy")
    target = predictor_pod(docs, NS)
    assert [p["metadata"]["name"] for p in selecting(policies, target)] == ["slmops-predictors"]
    assert _unreachable_predictors(docs, NS, ["kourier-system"]) == []
    evaluation = release_pods(docs)["evaluation"]
    assert reachable(policies, target, evaluation, 8080)
    assert reachable(policies, target, pod("monitoring", app="prometheus"), 8080)
    for outsider in (pod("default", app="curious"), pod("istio-system", app="ingressgateway")):
        assert not reachable(policies, target, outsider, 8080), outsider
    # Another release's predictors are not this policy's business.
    other = predictor_pod(docs, NS)
    other["labels"]["slmops.io/owner"] = "another-release"
    assert not selecting(policies, other)


def test_the_predictor_check_catches_a_policy_that_cuts_predictors_off(default_docs):
    """The check above can fail: a policy on the predictors admitting only the release is reported."""
    lockdown = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "lockdown", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "slmops"}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "slmops"}}}]}]},
    }  # fmt: skip
    # Without the chart's own predictor policy, which admits them.
    others = [d for d in default_docs if d["metadata"]["name"] != "slmops-predictors"]
    problems = _unreachable_predictors([*others, lockdown], NS, ["istio-system"])
    assert "knative activator cannot reach port 8012" in problems
    assert "gateway in istio-system cannot reach port 8080" in problems
