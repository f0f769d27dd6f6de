"""Fixtures shared across test folders.

`stack` starts the real local stack (`slmops up`: a Ray head and every gRPC
service as separate processes on free ports) once per session, exactly as a
user would, and stops it with `slmops down` at the end.

`postgres` and `s3` start a throwaway PostgreSQL cluster and an S3 API
(moto's server) on loopback once per session (slmops.testing.servers);
`pg_url` is a new database of that cluster for each test module.
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
from slmops.testing.servers import Postgres, S3Server


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()  # fails, saying what to install, when PostgreSQL is missing
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pg_url(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    """A new, empty database for this test module; its SQLAlchemy URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.module.__name__.rsplit(".", 1)[-1]).lower()
    return postgres.database(name[:60])


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process reaches the S3 server through AWS_ENDPOINT_URL and credentials, as it would reach AWS."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    import fsspec

    fsspec.config.conf.pop("s3", None)
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()
    return s3
