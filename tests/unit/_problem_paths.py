"""The field paths an INVALID_ARGUMENT's details name ("spec.a: problem; spec.b[0].c: problem")."""

from __future__ import annotations

import re

_PATH = re.compile(r"(?:^|; )(spec(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\])*): ")


def problem_paths(details: str) -> list[str]:
    """Every field path the details name, in order."""
    return _PATH.findall(details)
