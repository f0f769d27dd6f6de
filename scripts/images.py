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
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images_catalog import (  # noqa: F401 (IMAGES, SCHEME_DRIVERS: the image table, read from here too)
    BUILDAH,
    BY_NAME,
    DOCKER,
    IMAGES,
    ROOT,
    SCHEME_DRIVERS,
    Image,
    buildah,
    ensure_buildah,
    exists,
    log,
    ref,
    selected,
    sizes_table,
)
from _images_smoke import smoke

LOCAL_BASE = "localhost/slmops-debian:bookworm"
BUILD_CA = "/run/build-ca.crt"  # where the host's CA bundle is mounted during a build


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


# ---------------------------------------------------------------- push, manifests


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
