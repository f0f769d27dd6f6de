"""`make reliability`: run every attack and fault test, and print one table of what each did.

Each row: the attack or fault, what must happen, what the test saw, the data it cost (must be none),
and whether the test passed. The tests are the ones marked `reliability` (tests/reliability.py says
how a test joins); they run in `make test` too. The table is also written as Markdown to
build/reliability.md. Exit status: pytest's.

    python scripts/reliability.py [-n WORKERS] [extra pytest arguments]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("attack or fault", "expected", "observed", "data lost", "result")


def rows_of(path: Path) -> list[tuple[str, ...]]:
    rows = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
    return [(r["attack"], r["expected"], r.get("observed") or "as expected", r.get("lost") or "none",
             r["outcome"]) for r in rows]  # fmt: skip


def markdown(rows: list[tuple[str, ...]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--workers", default=os.environ.get("TEST_WORKERS", "2"))
    args, extra = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = {**os.environ, "SLMOPS_RELIABILITY_OUT": str(out)}
        command = [sys.executable, "-m", "pytest", "-q", "-m", "reliability", "-n", str(args.workers),
                   "--dist", "loadfile", *extra]  # fmt: skip
        code = subprocess.call(command, cwd=ROOT, env=env)
        rows = sorted(rows_of(out), key=lambda r: (r[4] == "passed", r[0]))
    table = markdown(rows)
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "reliability.md").write_text(table)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        shown = Table(*COLUMNS, show_lines=True, title="slmops reliability")
        for row in rows:
            shown.add_row(*row)
        Console().print(shown)
    else:
        print(table)
    lost = [r for r in rows if r[3] != "none"]
    print(f"{len(rows)} attacks and faults: {sum(r[4] == 'passed' for r in rows)} held, "
          f"{len(lost)} with data lost; table in build/reliability.md")  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
