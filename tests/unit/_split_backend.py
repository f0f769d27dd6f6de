"""A serving backend stand-in for the deployments' control plane: it serves whatever it is told at once.

Every revision it is handed is READY at once at its own URL (`revision_url(n)`), and the split it
reports is the one asked for. It keeps each Revision it was handed (`handed`), so a test reads what
the deployments passed down (limits, models). Predictors are not started: what runs a real predictor
is tested in tests/integration/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.core.errors import NotFound
from slmops.serving.backends import READY, BackendStatus, Revision, RevisionStatus, split

STABLE_URL = "http://127.0.0.1:9000"


def revision_url(number: int) -> str:
    return f"http://127.0.0.1:{9000 + number}"


class SplitBackend:
    checks_files = True  # nothing is served from the files: nothing to check

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.handed: list[Revision] = []

    def apply(self, name: str, revision: Revision, record_dir: Path | None = None) -> dict[str, Any]:
        self.handed.append(revision)
        state = self.deployments.setdefault(
            name, {"serving": 0, "latest": 0, "percent": 100, "revisions": {}}
        )
        state["revisions"][revision.number] = revision
        state["latest"] = revision.number
        if revision.traffic_percent >= 100 or not state["serving"]:
            state["serving"], state["percent"] = revision.number, 100
        else:
            state["percent"] = revision.traffic_percent
        return {"url": STABLE_URL}

    def set_traffic(self, name: str, percent: int, record_dir: Path | None = None) -> None:
        state = self.deployments[name]
        if percent >= 100:
            state["serving"], state["percent"] = state["latest"], 100
        else:
            state["percent"] = percent

    def promote(self, name: str, record_dir: Path | None = None) -> None:
        self.set_traffic(name, 100)

    def rollback(self, name: str, record_dir: Path | None = None) -> None:
        self.set_traffic(name, 0)

    def delete(self, name: str) -> None:
        self.deployments.pop(name, None)

    def status(self, name: str) -> BackendStatus:
        if name not in self.deployments:
            raise NotFound("deployment", name)
        state = self.deployments[name]
        traffic = {
            n: p for n, p in split(state["serving"], state["latest"], state["percent"]).items() if p > 0
        }
        revisions = {n: RevisionStatus(READY, revision_url(n)) for n in state["revisions"]}
        return BackendStatus(state=READY, url=STABLE_URL, ready_revision=max(traffic), traffic=traffic,
                             revisions=revisions)  # fmt: skip

    def restore(self, name: str, revisions: list[Revision], runtime: dict[int, dict[str, Any]],
                serving: int, latest: int, percent: int) -> None:  # fmt: skip
        if name in self.deployments:
            return
        self.handed.extend(revisions)
        self.deployments[name] = {"serving": serving, "latest": latest, "percent": percent,
                                  "revisions": {r.number: r for r in revisions}}  # fmt: skip
