"""Imports point down (../shared/DESIGN.md, "Layout"): checked on the source, lazy imports included.

orchestration (pipeline, evaluation, demo, bench, cli) -> stage services -> core -> api.
A service never imports `cli/`, another service's internals, or `testing/`
(stand-ins and tiny-model factories for tests and the demo).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "slmops"
SERVICES = ("synthesis", "training", "conversion", "serving", "predictor", "evaluation", "pipeline")
# What each part may import besides itself, api and core.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "api": set(),
    **{service: set() for service in SERVICES},
    "cli": {*SERVICES},  # the CLI reads specs' shared constants; it is an API client otherwise
    "demo": {*SERVICES, "cli", "testing"},
    "bench": {*SERVICES, "demo", "testing"},
    "testing": {*SERVICES},  # stand-ins may use what they stand in for
}


def imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "slmops" and len(bits) > 1:
                parts.add(bits[1])
    return parts


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_down(part):
    folder = PACKAGE / part
    wrong = {}
    for path in sorted(folder.rglob("*.py")):
        if part == "api":
            continue
        bad = imported_parts(path) - {part, "api", "core"} - ALLOWED[part]
        if bad:
            wrong[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not wrong, wrong


def test_every_part_is_listed():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)
