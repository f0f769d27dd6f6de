"""Fixtures shared across test folders.

`stack` starts the real local stack (`slmops up`: a Ray head and every gRPC
service as separate processes on free ports) once per session, exactly as a
user would, and stops it with `slmops down` at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slmops.cli import client
from slmops.cli import stack as local_stack
from slmops.core import settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("stack")
    saved = dict(os.environ)
    os.environ["SLMOPS_DATA_DIR"] = str(data_dir)
    os.environ["SLMOPS_JOB_POLL_S"] = "0.5"
    record = local_stack.up(data_dir, free_ports=True, num_cpus=2, say=lambda *_: None)
    for name, info in record["services"].items():
        os.environ[settings.VARS[f"{name}_addr"].env] = info["address"]
    record["data_dir"] = Path(record["data_dir"])
    try:
        yield record
    finally:
        client.close()
        local_stack.down(data_dir, say=lambda *_: None)
        os.environ.clear()
        os.environ.update(saved)
