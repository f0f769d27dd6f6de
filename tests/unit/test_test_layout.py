"""Test modules have unique names: tests/ folders are not packages, so two files of one name clash.

pytest imports each test file by its base name (rootdir-relative, no __init__.py), so a second
`test_x.py` in another folder stops the whole run at collection.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_name():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(TESTS)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
