"""Fixtures the chart, manifest and image tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit._charts import helm_binary


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary scripts/install_helm.py provides; the chart tests render with it."""
    return helm_binary()
