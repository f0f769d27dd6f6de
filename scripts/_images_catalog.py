"""The slmops images and the buildah calls every command of scripts/images.py makes.

Each image is built from a Dockerfile under docker/ on top of another image of
the table (BASE_IMAGE) or of PYTHON_IMAGE, and tagged localhost/slmops-<name>:<tag>.
buildah runs with the vfs storage driver (as root, no Docker engine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
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


def ensure_buildah() -> None:
    if os.geteuid() != 0:
        sys.exit("images: run as root (buildah with the vfs storage driver and chroot isolation)")
    if shutil.which("buildah") is None:
        log("installing Debian's buildah")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "buildah"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


def sizes_table(tag: str) -> str:
    # buildah pads the columns of a format (tabs included): split on a separator of our own.
    out = buildah("images", "--format", "{{.Name}}:{{.Tag}}|{{.Size}}", check=False, capture=True)
    rows = [[part.strip() for part in line.split("|")] for line in out.splitlines() if "slmops" in line]
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"\n{'image':<{width}}  size", *(f"{r[0]:<{width}}  {r[1]}" for r in rows if len(r) == 2)]
    return "\n".join(lines)
