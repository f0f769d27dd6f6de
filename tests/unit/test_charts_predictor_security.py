"""The chart's predictors: an API key by default, reachable from the release only, cluster-local.

Rendered with the real helm; NetworkPolicies evaluated the way the API server defines them
(tests/unit/_charts.py), the InferenceService built by the kserve backend with the rendered settings.
"""

from __future__ import annotations

import base64

import pytest

from slmops.serving import deployments
from slmops.serving.backends.kserve import KServeBackend
from tests.unit._charts import check, container_env, find, one, reachable, render, selecting
from tests.unit.test_charts_observability import pod, predictor_pod, release_pods

NS = "slmops"
KEY_FILE = "/var/run/secrets/slmops-predictor/api-key"
CALLERS = ("serving", "synthesis", "evaluation")


@pytest.fixture(scope="module")
def docs(helm):
    return render()


def _container(docs, kind: str, name: str) -> dict:
    return one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _mounted(spec: dict, container: dict, path: str) -> str:
    """The Secret mounted at the folder of `path` in this pod ("" when none)."""
    folder = path.rsplit("/", 1)[0]
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == folder), None)
    if mount is None:
        return ""
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return volume.get("secret", {}).get("secretName", "")


@pytest.mark.reliability(
    "the chart is installed with default values; a client in the cluster calls a predictor without a key",
    expected="a random key Secret kept across upgrades, mounted by the runtime (--api-key-file): 401",
)
def test_a_key_secret_is_made_by_default_and_the_runtime_requires_it(docs, probe):
    secret = one(docs, "Secret", "slmops-predictor-key")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert len(key) >= 32
    runtime = one(docs, "ServingRuntime", "slmops-predictor")["spec"]
    (container,) = runtime["containers"]
    assert f"--api-key-file={KEY_FILE}" in container["args"]
    assert _mounted(runtime, container, KEY_FILE) == "slmops-predictor-key"
    assert check.validate_manifests([secret, one(docs, "ServingRuntime", "slmops-predictor")]) == []
    probe.saw(f"Secret slmops-predictor-key ({len(key)} chars, resource-policy keep); runtime --api-key-file")


def test_an_existing_secret_replaces_the_generated_one(helm):
    docs = render("serving.kserve.runtime.apiKeySecret=my-key")
    assert not find(docs, "Secret", "slmops-predictor-key")
    runtime = one(docs, "ServingRuntime", "slmops-predictor")["spec"]
    assert _mounted(runtime, runtime["containers"][0], KEY_FILE) == "my-key"
    serving = one(docs, "Deployment", "slmops-serving")["spec"]["template"]["spec"]
    assert _mounted(serving, serving["containers"][0], KEY_FILE) == "my-key"


def test_the_key_goes_to_the_inference_services_namespace_too(helm):
    docs = render("serving.kserve.namespace=models")
    secrets = find(docs, "Secret", "slmops-predictor-key")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["models", "slmops"]
    assert len({s["data"]["api-key"] for s in secrets}) == 1  # one key


def test_the_callers_of_deployments_and_the_ray_pods_read_the_key(docs):
    for svc in CALLERS:
        container = _container(docs, "Deployment", f"slmops-{svc}")
        spec = one(docs, "Deployment", f"slmops-{svc}")["spec"]["template"]["spec"]
        assert container_env(container)["SLMOPS_PREDICTOR_API_KEY_FILE"] == KEY_FILE, svc
        assert _mounted(spec, container, KEY_FILE) == "slmops-predictor-key", svc
    for svc in ("training", "conversion", "pipeline"):  # they call no deployment
        assert "SLMOPS_PREDICTOR_API_KEY_FILE" not in container_env(
            _container(docs, "Deployment", f"slmops-{svc}")
        )
    ray = one(docs, "RayCluster", "slmops-ray")["spec"]
    for spec in (ray["headGroupSpec"]["template"]["spec"], ray["workerGroupSpecs"][0]["template"]["spec"]):
        container = spec["containers"][0]
        assert container_env(container)["SLMOPS_PREDICTOR_API_KEY_FILE"] == KEY_FILE
        assert _mounted(spec, container, KEY_FILE) == "slmops-predictor-key"


@pytest.mark.reliability(
    "a pod outside the release (same namespace or another) connects to a predictor pod",
    expected="the default NetworkPolicy admits only the release's pods, its Ray pods, Knative, the gateways "
    "and Prometheus",
)
def test_a_network_policy_selects_the_predictors_by_default(docs, probe):
    policies = find(docs, "NetworkPolicy")
    target = predictor_pod(docs, NS)
    assert [p["metadata"]["name"] for p in selecting(policies, target)] == ["slmops-predictors"]
    pods = release_pods(docs)
    admitted = {"serving": pods["serving"], "evaluation": pods["evaluation"], "ray-worker": pods["ray-worker"],
                "ray-head": pods["ray-head"], "knative activator": pod("knative-serving", app="activator"),
                "gateway": pod("istio-system", app="ingressgateway"),
                "prometheus": pod("monitoring", app="prometheus")}  # fmt: skip
    for name, source in admitted.items():
        assert reachable(policies, target, source, 8080), name
    strangers = {"same namespace": pod(NS, app="curious"), "other namespace": pod("default", app="curious"),
                 "another release": pod(NS, **{"app.kubernetes.io/instance": "other",
                                               "app.kubernetes.io/part-of": "slmops"})}  # fmt: skip
    for name, source in strangers.items():
        for port in (8080, 8081):
            assert not reachable(policies, target, source, port), name
    assert check.validate_manifests(policies) == []
    probe.saw(f"{len(admitted)} callers admitted; {len(strangers)} outsiders refused on 8080 and 8081")


def test_more_callers_can_be_admitted(helm):
    docs = render("networkPolicy.predictors.extraFrom[0].namespaceSelector.matchLabels.team=apps")
    peers = one(docs, "NetworkPolicy", "slmops-predictors")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "apps"}}} in peers


@pytest.mark.reliability(
    "the serving service of a default install creates an InferenceService",
    expected="networking.kserve.io/visibility: cluster-local (no external URL) unless "
    "serving.kserve.exposeExternally",
)
def test_inference_services_are_cluster_local_unless_the_values_opt_out(docs, helm, monkeypatch, probe):
    seen = {}
    for name, rendered in (("default", docs), ("exposed", render("serving.kserve.exposeExternally=true"))):
        env = container_env(_container(rendered, "Deployment", "slmops-serving"))
        monkeypatch.setenv("SLMOPS_KSERVE_EXPOSE_EXTERNALLY", env["SLMOPS_KSERVE_EXPOSE_EXTERNALLY"])
        backend = KServeBackend(
            namespace=NS, runtime=env["SLMOPS_KSERVE_RUNTIME"], owner=env["SLMOPS_KSERVE_OWNER"]
        )
        labels = backend.build("student", deployments.Revision(1, "s3://m/x", "s3://m/x"))["metadata"][
            "labels"
        ]
        seen[name] = labels.get("networking.kserve.io/visibility", "external")
    assert seen == {"default": "cluster-local", "exposed": "external"}
    probe.saw(f"default: {seen['default']}; exposeExternally=true: {seen['exposed']}")


def test_kustomize_mirrors_the_key_and_the_predictor_policy(monkeypatch):
    dirs = {path.name: path for path in check.kustomize_dirs()}
    runtime = one(check.kustomize_build(dirs["cluster"]), "ClusterServingRuntime", "slmops-predictor")["spec"]
    assert f"--api-key-file={KEY_FILE}" in runtime["containers"][0]["args"]
    assert _mounted(runtime, runtime["containers"][0], KEY_FILE) == "slmops-predictor-key"
    docs = check.kustomize_build(dirs["dev"])
    config = next(d for d in find(docs, "ConfigMap") if "SLMOPS_KSERVE_OWNER" in d.get("data", {}))["data"]
    assert config["SLMOPS_KSERVE_EXPOSE_EXTERNALLY"] == "false"
    namespace = one(docs, "Namespace")["metadata"]["name"]
    for svc in CALLERS:
        deployment = next(d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith(f"-{svc}"))
        spec = deployment["spec"]["template"]["spec"]
        assert container_env(spec["containers"][0])["SLMOPS_PREDICTOR_API_KEY_FILE"] == KEY_FILE, svc
        assert _mounted(spec, spec["containers"][0], KEY_FILE) == "slmops-predictor-key", svc
    monkeypatch.delenv("SLMOPS_KSERVE_EXPOSE_EXTERNALLY", raising=False)
    backend = KServeBackend(
        namespace=namespace, runtime="slmops-predictor", owner=config["SLMOPS_KSERVE_OWNER"]
    )
    labels = backend.build("student", deployments.Revision(1, "s3://m/x", "s3://m/x"))["metadata"]["labels"]
    assert labels["networking.kserve.io/visibility"] == "cluster-local"
    target = pod(namespace, **labels, component="predictor")
    policies = [
        {**p, "metadata": {**p["metadata"], "namespace": namespace}} for p in find(docs, "NetworkPolicy")
    ]
    assert [p["metadata"]["name"] for p in selecting(policies, target)] == ["slmops-predictors"]
    serving = next(d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("-serving"))
    assert reachable(
        policies, target, pod(namespace, **serving["spec"]["template"]["metadata"]["labels"]), 8080
    )
    assert not reachable(policies, target, pod(namespace, app="curious"), 8080)
    assert not reachable(policies, target, pod("default", app="curious"), 8081)


def test_egress_and_secret_hosts_reach_the_services_that_check_and_the_ray_pods_that_send(helm):
    """The services check a request's hosts at Create and the Ray jobs again before they connect:
    both see the same settings."""
    default = _container(render(), "Deployment", "slmops-synthesis")
    assert container_env(default)["SLMOPS_EGRESS_ALLOW"] == "*"
    assert "SLMOPS_SECRET_HOSTS" not in container_env(default)
    docs = render("egress.secretHosts=OPENAI_API_KEY=api.openai.com", "egress.allow=api.openai.com",
                  "egress.plainHttpHosts=teacher.internal")  # fmt: skip
    wanted = {"SLMOPS_SECRET_HOSTS": "OPENAI_API_KEY=api.openai.com", "SLMOPS_EGRESS_ALLOW": "api.openai.com",
              "SLMOPS_PLAIN_HTTP_HOSTS": "teacher.internal"}  # fmt: skip
    ray = one(docs, "RayCluster", "slmops-ray")["spec"]
    pods = [ray["headGroupSpec"]["template"], *(g["template"] for g in ray["workerGroupSpecs"])]
    containers = [_container(docs, "Deployment", f"slmops-{name}") for name in ("synthesis", "evaluation")]
    containers += [p["spec"]["containers"][0] for p in pods]
    for container in containers:
        env = container_env(container)
        assert {name: env.get(name) for name in wanted} == wanted, container["name"]
