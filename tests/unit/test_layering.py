"""Imports point down (../shared/DESIGN.md, "Layout"): checked on the source, lazy imports included.

orchestration (pipeline, evaluation, demo, bench, cli) -> stage services -> core -> api.
A service never imports `cli/`, another service's internals, or `testing/`
(stand-ins and tiny-model factories for tests and the demo).
Within the package the module graph has no cycle (Tarjan's algorithm over every import).
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
    "cli": set(),  # an API client: the contracts and core only
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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], name: str = "", package: str = "") -> set[str]:
    """The modules among `modules` that `path` imports anywhere (inside functions too).

    `from slmops.x.y import z` is module `slmops.x.y.z` when that is a module, else `slmops.x.y`;
    `name` and `package` (the module's own, for relative imports) default to what `path` says.
    """
    name = name or module_name(path)
    package = package or (name if path.name == "__init__.py" else name.rpartition(".")[0])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import slmops.x.y.Name`: the longest module prefix
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the components of `graph` in which every node reaches every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set(stack[stack.index(node) :])
            del stack[stack.index(node) :]
            on_stack.difference_update(component)
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_strongly_connected_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    found = sorted(sorted(c) for c in strongly_connected(graph) if len(c) > 1)
    assert found == [["a", "b", "c"], ["d", "e"]]


def test_imported_modules_resolves_names_and_lazy_imports(tmp_path):
    modules = {"slmops.a", "slmops.a.b", "slmops.a.c", "slmops.a.d", "slmops.e"}
    source = tmp_path / "b.py"
    source.write_text(
        "from slmops.a import c, Name\n"
        "from . import d\n"
        "def later():\n"
        "    import slmops.e.Thing\n"
        "    from .. import nothing\n"
    )
    found = imported_modules(source, modules, name="slmops.a.b", package="slmops.a")
    assert found == {"slmops.a.c", "slmops.a", "slmops.a.d", "slmops.e"}


def test_import_graph_covers_the_package():
    graph = import_graph()
    assert "slmops.core.errors" in graph["slmops.core.spec_checks"]
    assert all(target in graph for targets in graph.values() for target in targets)


def test_no_import_cycles():
    cycles = {frozenset(c) for c in strongly_connected(import_graph()) if len(c) > 1}
    found = sorted(sorted(c) for c in cycles)
    assert not found, "import cycles (lazy imports included):\n" + "\n".join(map(", ".join, found))
