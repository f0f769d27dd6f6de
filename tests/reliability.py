"""The rows of `make reliability`: what an attack or a fault does, what should happen, what did.

A test joins the table with `@pytest.mark.reliability("attack or fault", expected="what must happen")`.
It may say what it saw through the `probe` fixture (`probe.saw("refused at Create in 0.02 s")`) and
what data the fault cost (`probe.lost = "..."`; "none" unless it says otherwise). A test that passes
without saying what it saw shows "as expected"; a failing one shows its failure's first line.

The rows travel in each test report's user_properties, so they reach the controller process under
pytest-xdist too; with SLMOPS_RELIABILITY_OUT set, the session writes them there as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

KEY = "reliability"
_ROWS: list[dict[str, Any]] = []  # the session's rows, in the process that writes the table


@dataclass
class Probe:
    attack: str
    expected: str
    observed: str = ""
    lost: str = "none"

    def saw(self, observed: str) -> None:
        self.observed = observed


def _row(item: pytest.Item) -> dict[str, Any] | None:
    for name, value in item.user_properties:
        if name == KEY:
            return value
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability(attack, expected): a row of `make reliability` (an attack or a fault)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker(KEY)
    if marker is None or _row(item) is not None:
        return
    attack = marker.args[0] if marker.args else item.name
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        attack = f"{attack} [{callspec.id}]"
    row = asdict(Probe(attack=attack, expected=marker.kwargs.get("expected", "")))
    row["test"] = item.nodeid
    item.user_properties.append((KEY, row))


@pytest.fixture
def probe(request: pytest.FixtureRequest) -> Probe:
    """What a reliability test saw; copied into its row of the table when the test ends."""
    row = _row(request.node)
    assert row is not None, "the probe fixture needs @pytest.mark.reliability(attack, expected=...)"
    found = Probe(attack=row["attack"], expected=row["expected"])
    request.addfinalizer(lambda: row.update(observed=found.observed, lost=found.lost))
    return found


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    rows = [value for name, value in report.user_properties if name == KEY]
    if not rows:
        return
    failed = report.failed
    if report.when == "call" or (failed and report.when == "setup") or report.skipped:
        row = dict(rows[0])
        row["outcome"] = report.outcome
        if failed:
            first = str(report.longrepr).strip().splitlines()
            row["observed"] = next(
                (line[1:].strip() for line in reversed(first) if line.startswith("E ")), "failed"
            )
            row["lost"] = row.get("lost") if row.get("lost") != "none" else "unknown (the test failed)"
        _ROWS.append(row)
    elif report.when == "teardown":
        # The probe's finalizer ran before this report was made: its observations replace the row's.
        for row in _ROWS:
            if row["test"] == rows[0]["test"] and row["outcome"] == "passed":
                row["observed"] = rows[0].get("observed") or "as expected"
                row["lost"] = rows[0].get("lost", "none")


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("SLMOPS_RELIABILITY_OUT")
    if not out or hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller writes the table
    Path(out).write_text(json.dumps(_ROWS, indent=1))
