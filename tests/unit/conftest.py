"""Fixtures the chart, manifest and image tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit._charts import helm_binary


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary scripts/install_helm.py provides; the chart tests render with it."""
    return helm_binary()


@pytest.fixture(scope="module")
def standin_server():
    """A stand-in OpenAI-compatible teacher on loopback (slmops.testing.standin), one per module."""
    from slmops.testing.standin import StandinServer

    with StandinServer() as server:
        yield server


@pytest.fixture
def standin(standin_server):
    """The module's stand-in teacher with its recorded requests and queued failures cleared."""
    standin_server.requests.clear()
    standin_server._failures.clear()
    return standin_server
