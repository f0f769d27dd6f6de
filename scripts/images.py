"""Build, smoke-test and push the slmops container images with buildah (no Docker engine).

    python3 scripts/images.py build [NAME ...] [--cuda] [--keep] [--arch ARCH]
    .venv/bin/python scripts/images.py smoke [NAME ...]
    python3 scripts/images.py push --registry REGISTRY [--tag TAG] [NAME ...]
    python3 scripts/images.py manifest --registry REGISTRY --arches amd64,arm64 [NAME ...]
    python3 scripts/images.py sizes

Runs as root with buildah's vfs storage driver and chroot isolation (`make images`,
`make images-smoke`, `make images-push`). Images are tagged localhost/slmops-<name>:<tag>.
PYTHON_IMAGE names the Debian-based Python 3.11 image every build starts from; unset,
scripts/make_base_image.sh makes localhost/slmops-debian:bookworm with debootstrap
(for machines that reach no container registry).

The pip installs inside a build use the host's pip settings where they exist: each
local folder of PIP_FIND_LINKS (or pip's `find-links`) is bind-mounted read-only at
the same path and passed as the PIP_FIND_LINKS build argument (a CPU torch wheel there
makes TORCH_INDEX_URL plain PyPI), and the CA bundle of PIP_CERT (or pip's `cert`) is
mounted for the build only, never copied into an image.

Smoke tests (the host venv provides the probes and the tiny model): every service image
answers grpc.health.v1 SERVING; the control-plane images lack torch and the ML stack;
every image that reads artifacts has a filesystem driver for each allowed scheme; the
predictor serves a tiny ORT GenAI model to the `openai` client; the Ray image imports
slmops.core.jobs.entry and runs a Ray task.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
LOCAL_BASE = "localhost/slmops-debian:bookworm"
BUILD_CA = "/run/build-ca.crt"  # where the host's CA bundle is mounted during a build
# The default allowed artifact schemes (settings.VARS["allowed_schemes"]) and their fsspec drivers.
SCHEME_DRIVERS = {
    "s3": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}
ML_MODULES = ("torch", "transformers", "olive", "onnxruntime", "onnxruntime_genai", "peft")


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    base: str | None = None  # another image of this table (BASE_IMAGE), or None: PYTHON_IMAGE
    args: dict[str, str] = field(default_factory=dict)
    installs: bool = False  # runs pip (gets the host's wheel folders and CA bundle)
    port: int = 0  # a gRPC service's port
    control: bool = False  # control plane: no torch, no ML stack
    reads_artifacts: bool = True
    cuda: bool = False  # built only with --cuda (PyPI's CUDA torch: several GB)


IMAGES: tuple[Image, ...] = (
    Image("base-control", "base.Dockerfile", args={"EXTRAS": "cluster"}, installs=True, control=True),
    Image("base", "base.Dockerfile", args={"EXTRAS": "ml,cluster"}, installs=True),
    Image("synthesis", "synthesis.Dockerfile", base="base", port=50051),
    Image("training", "training.Dockerfile", base="base", port=50052),
    Image("conversion", "conversion.Dockerfile", base="base", port=50053),
    Image("serving", "serving.Dockerfile", base="base-control", port=50054, control=True),
    Image("evaluation", "evaluation.Dockerfile", base="base-control", port=50055, control=True),
    Image("pipeline", "pipeline.Dockerfile", base="base-control", port=50056, control=True),
    Image("predictor", "predictor.Dockerfile", base="base"),
    Image("ray", "ray.Dockerfile", base="base"),
    Image(
        "base-cuda",
        "base.Dockerfile",
        installs=True,
        cuda=True,
        args={"EXTRAS": "ml,cluster", "TORCH_INDEX_URL": "https://pypi.org/simple"},
    ),  # fmt: skip
    Image("predictor-cuda", "predictor-cuda.Dockerfile", base="base-cuda", installs=True, cuda=True),
    Image("ray-cuda", "ray.Dockerfile", base="base-cuda", cuda=True),
)
BY_NAME = {image.name: image for image in IMAGES}


def ref(name: str, tag: str) -> str:
    return f"localhost/slmops-{name}:{tag}"


def log(message: str) -> None:
    print(f"images: {message}", flush=True)


def buildah(*args: str, check: bool = True, capture: bool = False, quiet: bool = False) -> str:
    done = subprocess.run([*BUILDAH, *args], check=check, text=True, stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.DEVNULL if quiet else None)  # fmt: skip
    return done.stdout or ""


def exists(image_ref: str) -> bool:
    return subprocess.run([*BUILDAH, "inspect", "--type", "image", image_ref],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0  # fmt: skip


def selected(names: list[str], cuda: bool) -> list[Image]:
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        sys.exit(f"images: unknown image(s) {unknown}; known: {sorted(BY_NAME)}")
    if names:
        return [image for image in IMAGES if image.name in names]
    return [image for image in IMAGES if cuda or not image.cuda]


# ---------------------------------------------------------------- build


def _pip_config(key: str) -> str:
    """pip's own setting for key (e.g. find-links, cert), from its environment variable or config files."""
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"), "")
    if value:
        return value
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        name, _, raw = line.partition("=")
        if name.split(".", 1)[-1] == key:
            return raw.strip().strip("'\"")
    return ""


def pip_build_options(image: Image) -> list[str]:
    """bud options giving a build that runs pip the host's wheel folders and CA bundle."""
    options: list[str] = []
    cert = _pip_config("cert") or os.environ.get("SSL_CERT_FILE", "")
    if cert and Path(cert).is_file():
        options += ["--volume", f"{cert}:{BUILD_CA}:ro", "--build-arg", f"PIP_CERT={BUILD_CA}"]
    if image.cuda:  # a local CPU torch wheel would win over PyPI's CUDA build
        return options
    folders = [f for f in _pip_config("find-links").split() if Path(f).is_dir()]
    if folders:
        for folder in folders:
            options += ["--volume", f"{folder}:{folder}:ro"]
        options += ["--build-arg", f"PIP_FIND_LINKS={' '.join(folders)}"]
        has_torch = any(any(Path(f).glob("torch-*.whl")) for f in folders)
        torch_index = os.environ.get("TORCH_INDEX_URL") or (
            os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple") if has_torch else ""
        )
        if torch_index and "TORCH_INDEX_URL" not in image.args:
            options += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
    return options


def bud_command(image: Image, tag: str, python_image: str, arch: str = "") -> list[str]:
    dockerfile = DOCKER / image.dockerfile
    cmd = [*BUILDAH, "bud", "--isolation", "chroot", "--file", str(dockerfile), "--tag", ref(image.name, tag),
           "--build-arg", f"VERSION={tag}"]  # fmt: skip
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if ignore.is_file():
        cmd += ["--ignorefile", str(ignore)]
    if arch:
        cmd += ["--arch", arch]
    if image.base is None:
        cmd += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    else:
        cmd += ["--build-arg", f"BASE_IMAGE={ref(image.base, tag)}"]
    for key, value in image.args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if image.installs:
        cmd += pip_build_options(image)
    return [*cmd, str(ROOT)]


def ensure_buildah() -> None:
    if os.geteuid() != 0:
        sys.exit("images: run as root (buildah with the vfs storage driver and chroot isolation)")
    if shutil.which("buildah") is None:
        log("installing Debian's buildah")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "buildah"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


def python_image() -> str:
    """PYTHON_IMAGE, or the local Debian base (made when missing)."""
    given = os.environ.get("PYTHON_IMAGE", "")
    if given:
        return given
    subprocess.run(["bash", str(ROOT / "scripts" / "make_base_image.sh"), LOCAL_BASE], check=True)
    return LOCAL_BASE


def build(names: list[str], tag: str, cuda: bool, keep: bool, arch: str) -> None:
    ensure_buildah()
    images = selected(names, cuda)
    base = python_image()
    for image in images:
        if image.base and not exists(ref(image.base, tag)) and image.base not in [i.name for i in images]:
            sys.exit(f"images: {image.name} needs {ref(image.base, tag)}: build {image.base} first")
    timings = []
    for image in images:
        if keep and exists(ref(image.name, tag)):
            log(f"{ref(image.name, tag)} exists, kept (--keep)")
            continue
        log(f"building {ref(image.name, tag)} from docker/{image.dockerfile}")
        start = time.monotonic()
        subprocess.run(bud_command(image, tag, base, arch), check=True, cwd=ROOT)
        timings.append((image.name, time.monotonic() - start))
        # A rebuilt tag leaves its previous image dangling: a full copy of its root under vfs.
        buildah("rmi", "--prune", check=False, capture=True)
    for name, seconds in timings:
        log(f"built {name} in {seconds:.0f} s")
    print(sizes_table(tag))


# ---------------------------------------------------------------- run inside an image


@contextlib.contextmanager
def container(image_ref: str) -> Iterator[str]:
    ctr = buildah("from", "--pull=never", "--quiet", image_ref, capture=True).strip()
    try:
        yield ctr
    finally:
        buildah("rm", ctr, check=False, capture=True)


def run_args(ctr: str, argv: list[str], env: dict[str, str] | None = None,
             volumes: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    cmd = [*BUILDAH, "run", "--isolation", "chroot"]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    for host, inside in (volumes or {}).items():
        cmd += ["--volume", f"{host}:{inside}"]
    return [*cmd, ctr, "--", *argv]


def run_in(
    ctr: str, argv: list[str], timeout: float = 300, **kw: dict[str, str]
) -> subprocess.CompletedProcess:
    return subprocess.run(run_args(ctr, argv, **kw), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def serve_in(ctr: str, argv: list[str], log_path: Path, **kw: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A server started inside the image (its own process group), stopped on exit."""
    with open(log_path, "w") as out:
        proc = subprocess.Popen(run_args(ctr, argv, **kw), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- smoke tests

CHECK_DRIVERS = """
import importlib, sys
import fsspec
drivers = {drivers!r}
for scheme, module in drivers.items():
    importlib.import_module(module)
    cls = fsspec.get_filesystem_class(scheme)
    assert cls.__module__.split('.')[0] == module, (scheme, cls)
print('drivers ok:', ', '.join(f'{{s}}->{{m}}' for s, m in drivers.items()))
"""

CHECK_ABSENT = """
import importlib.util
present = [m for m in {modules!r} if importlib.util.find_spec(m) is not None]
print('ML modules present:', present)
try:
    import torch
except ImportError as exc:
    print('import torch fails:', exc)
else:
    raise SystemExit('torch imported in a control-plane image')
raise SystemExit(1 if present else 0)
"""

# The serving service's KServe backend: kserve's InferenceService models and the Kubernetes client.
CHECK_KSERVE_BACKEND = """
from importlib.metadata import version
import kubernetes.client
import slmops.serving.backends.kserve
print('KServe backend imports: kserve', version('kserve'), 'kubernetes', version('kubernetes'))
"""

CHECK_RAY = """
import slmops.core.jobs.entry
import ray, torch, onnxruntime_genai, transformers
ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
         log_to_driver=False)
@ray.remote
def square(x):
    return x * x
got = ray.get([square.remote(i) for i in range(4)])
assert got == [0, 1, 4, 9], got
print('ray', ray.__version__, 'task results', got, 'torch', torch.__version__)
ray.shutdown()
"""


class Smoke:
    def __init__(self, tag: str, work: Path) -> None:
        self.tag = tag
        self.work = work
        self.results: list[tuple[str, str, bool, str]] = []

    def record(self, image: str, check: str, ok: bool, detail: str) -> None:
        self.results.append((image, check, ok, detail))
        log(f"{'PASS' if ok else 'FAIL'} {image}: {check}: {detail}")

    def data_dir(self, name: str) -> Path:
        path = self.work / f"data-{name}"
        path.mkdir()
        path.chmod(0o777)  # the images run as uid 10001 or 1000
        return path

    def service(self, image: Image) -> None:
        from slmops.core.health_probe import check

        port = free_port()
        argv = ["python", "-m", f"slmops.{image.name}", "--host", "127.0.0.1", "--port", str(port)]
        log_path = self.work / f"{image.name}.log"
        env = {"SLMOPS_DATA_DIR": "/data"}
        with container(ref(image.name, self.tag)) as ctr:
            status, start = "not started", time.monotonic()
            with serve_in(
                ctr, argv, log_path, env=env, volumes={str(self.data_dir(image.name)): "/data"}
            ) as proc:
                while time.monotonic() - start < 120 and proc.poll() is None:
                    status = check(port, timeout=2.0)
                    if status == "SERVING":
                        break
                    time.sleep(1)
            detail = f"health {status} on 127.0.0.1:{port} after {time.monotonic() - start:.1f} s"
            self.record(image.name, "gRPC health", status == "SERVING",
                        detail if status == "SERVING" else f"{detail}\n{tail(log_path)}")  # fmt: skip
            self.contents(image, ctr)

    def contents(self, image: Image, ctr: str) -> None:
        if image.control:
            done = run_in(ctr, ["python", "-c", CHECK_ABSENT.format(modules=ML_MODULES)], timeout=120)
            self.record(image.name, "no torch / ML stack", done.returncode == 0,
                        (done.stdout + done.stderr).strip().splitlines()[-1])  # fmt: skip
        if image.name == "serving":
            done = run_in(ctr, ["python", "-c", CHECK_KSERVE_BACKEND], timeout=120)
            self.record(image.name, "KServe backend clients", done.returncode == 0,
                        (done.stdout + done.stderr).strip()[-300:])  # fmt: skip
        if image.reads_artifacts:
            done = run_in(ctr, ["python", "-c", CHECK_DRIVERS.format(drivers=SCHEME_DRIVERS)], timeout=120)
            self.record(image.name, "artifact scheme drivers", done.returncode == 0,
                        (done.stdout + done.stderr).strip()[-300:])  # fmt: skip

    def predictor(self, image: Image) -> None:
        import httpx
        import openai

        model = tiny_onnx_model(self.work / "models")
        port = free_port()
        argv = ["python", "-m", "slmops.predictor", "--model-dir", "/mnt/models", "--name", "tiny",
                "--host", "127.0.0.1", "--http-port", str(port), "--threads", "1"]  # fmt: skip
        log_path = self.work / "predictor.log"
        base = f"http://127.0.0.1:{port}"
        with container(ref(image.name, self.tag)) as ctr:
            start, ready = time.monotonic(), False
            with serve_in(ctr, argv, log_path, volumes={str(model): "/mnt/models:ro"}) as proc:
                with httpx.Client(base_url=base, timeout=5, trust_env=False) as http:
                    while time.monotonic() - start < 180 and proc.poll() is None and not ready:
                        with contextlib.suppress(httpx.HTTPError):
                            ready = http.get("/v2/health/ready").status_code == 200
                        time.sleep(0.5 if ready else 1)
                self.record(image.name, "ready", ready, f"/v2/health/ready after {time.monotonic() - start:.1f} s"
                            + ("" if ready else "\n" + tail(log_path)))  # fmt: skip
                if ready:
                    http = httpx.Client(trust_env=False, timeout=60)
                    client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="unused", max_retries=0,
                                           http_client=http)  # fmt: skip
                    try:
                        reply = client.completions.create(model="tiny", prompt="hello world", max_tokens=8,
                                                          temperature=0)  # fmt: skip
                        tokens = reply.usage.completion_tokens if reply.usage else 0
                        ok = isinstance(reply.choices[0].text, str) and tokens > 0
                        detail = f"completion {reply.choices[0].text!r} ({tokens} tokens)"
                    except openai.OpenAIError as exc:
                        ok, detail = False, f"{type(exc).__name__}: {exc}\n{tail(log_path)}"
                    finally:
                        http.close()
                    self.record(image.name, "OpenAI completion", ok, detail)
            self.contents(image, ctr)

    def ray(self, image: Image) -> None:
        with container(ref(image.name, self.tag)) as ctr:
            start = time.monotonic()
            done = run_in(ctr, ["python", "-c", CHECK_RAY], timeout=300,
                          env={"RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
            out = (done.stdout + done.stderr).strip().splitlines()
            printed = done.stdout.strip().splitlines() or out
            self.record(image.name, "job_entry import + Ray task", done.returncode == 0,
                        f"{printed[-1] if printed else ''} ({time.monotonic() - start:.0f} s)"
                        + ("" if done.returncode == 0 else "\n" + "\n".join(out[-15:])))  # fmt: skip
            self.contents(image, ctr)


def tiny_onnx_model(out: Path) -> Path:
    """A 2-layer Qwen2 (hidden 64, ~300-token BPE) converted for ORT GenAI (int4, CPU) on the host."""
    from onnxruntime_genai.models.builder import create_model

    from slmops.testing import tiny

    texts = ["hello world, this is a tiny model", "the quick brown fox jumps over the lazy dog",
             "question: what is 2 + 3? answer: 5"] * 8  # fmt: skip
    tokenizer = tiny.train_tokenizer(texts, out / "tokenizer", 300)
    checkpoint = tiny.build_model(out / "checkpoint", tokenizer, architecture="qwen2", hidden_size=64,
                                  num_hidden_layers=2, max_position_embeddings=128, seed=0)  # fmt: skip
    folder = out / "onnx"
    create_model(str(checkpoint), str(checkpoint), str(folder), "int4", "cpu", str(out / "cache"),
                 hf_remote=False)  # fmt: skip
    for path in [out, *out.rglob("*")]:  # readable by the image's user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def smoke(names: list[str], tag: str) -> int:
    ensure_buildah()
    images = [i for i in selected(names, cuda=False) if not i.name.startswith("base")]
    missing = [i.name for i in images if not exists(ref(i.name, tag))]
    if missing:
        sys.exit(f"images: not built: {missing} (make images)")
    with tempfile.TemporaryDirectory(prefix="slmops-smoke-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        runner = Smoke(tag, work)
        for image in images:
            if image.port:
                runner.service(image)
            elif image.name == "predictor":
                runner.predictor(image)
            elif image.name == "ray":
                runner.ray(image)
            else:
                log(f"{image.name}: no smoke test here (needs a GPU)")
    print("\nimage            check                          result")
    for image, check, ok, detail in runner.results:
        print(f"{image:<16} {check:<30} {'PASS' if ok else 'FAIL'}  {detail.splitlines()[0]}")
    print(sizes_table(tag))
    failed = [r for r in runner.results if not r[2]]
    log(f"{len(runner.results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------- sizes, push, manifests


def sizes_table(tag: str) -> str:
    # buildah pads the columns of a format (tabs included): split on a separator of our own.
    out = buildah("images", "--format", "{{.Name}}:{{.Tag}}|{{.Size}}", check=False, capture=True)
    rows = [[part.strip() for part in line.split("|")] for line in out.splitlines() if "slmops" in line]
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"\n{'image':<{width}}  size", *(f"{r[0]:<{width}}  {r[1]}" for r in rows if len(r) == 2)]
    return "\n".join(lines)


def push(names: list[str], registry: str, tag: str, cuda: bool) -> None:
    ensure_buildah()
    for image in selected(names, cuda):
        source = ref(image.name, tag)
        if not exists(source):
            log(f"{source} not built, skipped")
            continue
        target = f"docker://{registry.rstrip('/')}/slmops-{image.name}:{tag}"
        log(f"push {source} -> {target}")
        buildah("push", source, target)


def manifest(names: list[str], registry: str, tag: str, arches: list[str], cuda: bool, do_push: bool) -> None:
    """One multi-arch manifest list per image from per-arch builds tagged <tag>-<arch>."""
    ensure_buildah()
    for image in selected(names, cuda):
        target = f"{registry.rstrip('/')}/slmops-{image.name}:{tag}"
        buildah("manifest", "rm", target, check=False, capture=True, quiet=True)  # a list left from before
        buildah("manifest", "create", target, capture=True)
        for arch in arches:
            source = f"containers-storage:{ref(image.name, f'{tag}-{arch}')}"
            buildah("manifest", "add", "--arch", arch, target, source, capture=True)
        log(f"manifest {target}: {', '.join(arches)}")
        if do_push:
            buildah("manifest", "push", "--all", target, f"docker://{target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/images.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "smoke", "push", "manifest", "sizes"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--tag", default=os.environ.get("TAG", "0.1.0"))
        if name != "sizes":
            cmd.add_argument("names", nargs="*", help=f"images (default: all but CUDA): {', '.join(BY_NAME)}")
            cmd.add_argument("--cuda", action="store_true", help="include the CUDA images (several GB)")
        if name == "build":
            cmd.add_argument("--keep", action="store_true", help="skip images that exist")
            cmd.add_argument("--arch", default="", help="build for this architecture (needs qemu binfmt)")
        if name in ("push", "manifest"):
            cmd.add_argument("--registry", required=True, help="e.g. registry.example.com/ml")
        if name == "manifest":
            cmd.add_argument("--arches", default="amd64,arm64")
            cmd.add_argument("--push", action="store_true", help="push each manifest list with --all")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.names, args.tag, args.cuda, args.keep, args.arch)
    elif args.command == "smoke":
        return smoke(args.names, args.tag)
    elif args.command == "push":
        push(args.names, args.registry, args.tag, args.cuda)
    elif args.command == "manifest":
        manifest(args.names, args.registry, args.tag, args.arches.split(","), args.cuda, args.push)
    else:
        print(sizes_table(args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
