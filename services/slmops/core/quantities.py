"""Kubernetes-style quantities in request fields ("4Gi", "512Mi", "2G")."""

from __future__ import annotations

import re

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?)?B?\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int | None:
    """Bytes in a memory quantity like "4Gi", "512Mi", "2G" or "1000"; None if malformed."""
    match = _MEMORY.match(text)
    if not match:
        return None
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    if not unit:
        return int(number)
    power = "kmgtp".index(unit[0]) + 1
    return int(number * (1024**power if unit.endswith("i") else 1000**power))


def check_memory(value: str, field: str, problems: list[tuple[str, str]]) -> int:
    """Bytes of an optional memory field: '' is 0 (unbounded); a malformed value is a problem."""
    if not value.strip():
        return 0
    parsed = parse_memory(value)
    if not parsed:
        problems.append((field, f"{value!r} is not a quantity like 4Gi or 512Mi"))
        return 0
    return parsed
