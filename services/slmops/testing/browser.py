"""Headless Chromium (Debian's `chromium`, installed by `make setup`) for tests of HTML pages."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--mute-audio")  # fmt: skip


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is not installed: `make setup` installs Debian's chromium package "
                       "(scripts/install_chromium.sh)")  # fmt: skip


def _run(args: list[str], timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="slmops-chromium-") as profile:
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 3200) -> Path:
    """A PNG of the page as Chromium renders it."""
    png = Path(png_path).resolve()
    _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(html_path).resolve().as_uri()])
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot at {png}")
    return png


def dump_dom(html_path: str | Path) -> str:
    """The page's DOM after Chromium parsed it."""
    return _run(["--dump-dom", Path(html_path).resolve().as_uri()]).stdout
