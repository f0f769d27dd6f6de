"""The evaluation report that judged a deployment's canary, found without being named.

`slmops bench` and a pipeline's evaluate stage write their reports under the
artifact root's `reports/` folder (evaluation jobs' default output). A report
judged a canary revision when its gate's candidate was reached at one of the
URLs that revision was served at (the revision's own URL, never the
deployment's split one), asked for the deployment's model (or one of its
adapters, or left the model to the endpoint), and the report was sealed after
the revision was created. The newest such report decides a promotion that
names no report: a failed gate, or a gate asked for without a verdict, blocks
it unless it is forced. Reports without a gate judge nothing and are passed
over. Reports written elsewhere (`--output`) are found only when named
(`--require-report`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from slmops.core import settings
from slmops.core.artifacts import MANIFEST
from slmops.core.stores import filesystem, store_errors

log = logging.getLogger(__name__)

REPORTS_FOLDER = "reports"  # under the artifact root: where evaluation jobs write unless told otherwise
_API_SUFFIXES = ("/openai/v1", "/v1")


@dataclass(frozen=True)
class Canary:
    """A deployment's canary revision as the reports may name it."""

    deployment: str
    number: int
    created: float  # when the revision was created (seconds since the epoch)
    urls: tuple[str, ...]  # every URL it was served at (its own, and the external one where there is one)
    models: tuple[str, ...]  # the model names it answers to: the deployment's, its adapters'


@dataclass(frozen=True)
class Finding:
    """The newest report whose gate judged the canary, and its verdict."""

    uri: str
    created: str
    evaluated: bool
    passed: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> bool:
        """A failed gate, or a gate that was asked for and gave no verdict."""
        return not (self.evaluated and self.passed)

    def why(self) -> str:
        if not self.evaluated:
            return "a gate was asked for but the report has no gate verdict"
        failed = [r for r in self.reasons if "FAILED" in r] or self.reasons
        return ("gate passed: " if self.passed else "gate failed: ") + "; ".join(failed)


def _endpoint(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of a base URL, without the API's suffix; None for what is not a URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = "127.0.0.1" if parts.hostname in ("localhost", "::1") else parts.hostname.lower()
    path = parts.path.rstrip("/")
    for suffix in _API_SUFFIXES:
        path = path.removesuffix(suffix)
    return parts.scheme, host, port, path


def _judged(manifest: dict[str, Any], canary: Canary) -> bool:
    """Whether the report's gate judged the canary: its candidate reached one of the canary's URLs."""
    spec = manifest.get("spec") or {}
    gate = spec.get("gate") or {}
    if manifest.get("kind") != "report" or not gate:
        return False
    candidate = next((t for t in spec.get("targets") or [] if t.get("name") == gate.get("candidate")), None)
    if candidate is None or candidate.get("model", "") not in ("", *canary.models):
        return False
    urls = {_endpoint(u) for u in canary.urls} - {None}
    return _endpoint(candidate.get("base_url", "")) in urls


def _created(manifest: dict[str, Any]) -> float:
    try:
        return dt.datetime.fromisoformat(str(manifest.get("created", ""))).timestamp()
    except ValueError:
        return 0.0


def _verdict(fs: Any, folder: str, uri: str, created: str) -> Finding:
    try:
        verdict = json.loads(fs.cat_file(f"{folder}/report.json"))["verdict"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("evaluation report %s: no verdict to read (%s)", uri, exc)
        return Finding(uri, created, evaluated=False, passed=False)
    return Finding(uri, created, evaluated=bool(verdict.get("evaluated")), passed=bool(verdict.get("passed")),
                   reasons=[str(r) for r in verdict.get("reasons", [])])  # fmt: skip


def newest_report(canary: Canary, root: str | None = None) -> Finding | None:
    """The newest report under `<root>/reports/` (root: the artifact root) whose gate judged the canary."""
    if not canary.urls:
        return None
    uri = f"{(root or settings.artifact_root()).rstrip('/')}/{REPORTS_FOLDER}"
    with store_errors(uri, "looking for the evaluation reports of a canary"):
        fs, path = filesystem(uri)
        if not fs.isdir(path):
            return None
        found: list[tuple[float, str, dict[str, Any]]] = []
        for entry in fs.ls(path, detail=True):
            if entry.get("type") != "directory":
                continue
            folder = entry["name"].rstrip("/")
            try:
                manifest = json.loads(fs.cat_file(f"{folder}/{MANIFEST}"))
            except (OSError, ValueError):
                continue  # not sealed (yet): not a report
            created = _created(manifest)
            if created >= canary.created and _judged(manifest, canary):
                found.append((created, folder, manifest))
        if not found:
            return None
        created, folder, manifest = max(found, key=lambda item: item[0])
        return _verdict(fs, folder, fs.unstrip_protocol(folder), str(manifest.get("created", "")))
