"""A local predictor process from the outside: the folder it loads, whether it answers, whether a pid
is still the process that was started, and the end of its log (the local backend's supervision)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import psutil

from slmops.core import artifact_cache, artifacts
from slmops.core.errors import SlmopsError
from slmops.core.stores import is_local
from slmops.serving.backends import Revision

log = logging.getLogger(__name__)


def model_dir(revision: Revision) -> Path:
    """The folder a revision's predictor loads: its storage URI, fetched again from the model's
    object store if it is not on this machine (a cleared cache, another node)."""
    path = artifacts.local_path(revision.storage_uri) if is_local(revision.storage_uri) else None
    if (path is None or not path.exists()) and not is_local(revision.model_uri):
        try:
            path = artifact_cache.localize(revision.model_uri, "model_uri")
        except SlmopsError as exc:  # the predictor fails to start and reports it
            log.warning("revision %d: cannot fetch %s: %s", revision.number, revision.model_uri, exc)
    return path if path is not None else Path(revision.storage_uri)


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the predictor at `url` answers its readiness probe (never through a proxy)."""
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=timeout_s, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def created(pid: int) -> float:
    """The process's creation time (0.0 when there is none): with the pid, it names the process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def is_ours(pid: int, created: float) -> bool:
    """True while `pid` is the live process that was started then (not a stranger that reused the number)."""
    if pid <= 0 or not created:
        return False
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a predictor's log ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
