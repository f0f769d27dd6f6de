"""Headless Chromium (Debian's `chromium`, installed by `make setup`) for tests of HTML pages.

Each run gets a new, empty profile and no network chatter of its own (no sync,
component updates, background requests or QUIC), so a page renders the same
offline as online.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

DEBIAN_CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 60.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")  # fmt: skip


def chromium() -> str:
    """The chromium executable: Debian's, else the one on PATH."""
    found = DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).exists() else shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium is not installed: `make setup` installs Debian's chromium package "
                           "(scripts/install_system_packages.sh)")  # fmt: skip
    return found


def _run(args: list[str], timeout: float = TIMEOUT_S) -> str:
    """Chromium's stdout; an error with its stderr when it fails or takes longer than timeout."""
    with tempfile.TemporaryDirectory(prefix="slmops-chromium-") as profile:
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stderr = (
                exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            )
            raise RuntimeError(f"chromium took more than {timeout:.0f} s: {' '.join(command)}\n"
                               f"{stderr[-2000:]}") from exc  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"chromium exited {result.returncode}: {' '.join(command)}\n{result.stderr[-2000:]}"
        )
    return result.stdout


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 3000) -> Path:
    """A PNG of the page as Chromium renders it in a width x height window."""
    png = Path(png_path).resolve()
    png.unlink(missing_ok=True)
    _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(html_path).resolve().as_uri()])
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot at {png}")
    return png


def dump_dom(html_path: str | Path) -> str:
    """The page's DOM, serialized, after Chromium parsed it."""
    return _run(["--dump-dom", Path(html_path).resolve().as_uri()])
