"""Fixtures shared across test folders.

`stack` starts the real local stack (`slmops up`: a Ray head and every gRPC
service as separate processes on free ports) once per session, exactly as a
user would, and stops it with `slmops down` at the end; its record's
`predictor_key` is the key its deployments require. `production_stack` is
the same stack, for one test module, on the production parts below: its job
stores on PostgreSQL and its artifact root on S3.

`postgres` and `s3` start a throwaway PostgreSQL cluster and an S3 API
(moto's server) on loopback once per session (slmops.testing.servers);
`pg_url` is a new database of that cluster for each test module, and
`store_url` runs a test on both job store backends: a SQLite file, and
`pg_url` emptied.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from slmops.cli import client
from slmops.cli import stack as local_stack
from slmops.core import settings
from slmops.testing.servers import Postgres, S3Server

pytest_plugins = ["tests.reliability"]


@contextmanager
def _local_stack(data_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """`slmops up` under data_dir with extra_env; this process's env points at it until the block ends."""
    saved = dict(os.environ)
    client.close()  # channels to another stack's services
    os.environ.update(extra_env or {})
    os.environ["SLMOPS_DATA_DIR"] = str(data_dir)
    os.environ["SLMOPS_JOB_POLL_S"] = "0.5"
    try:
        record = local_stack.up(data_dir, free_ports=True, num_cpus=2, say=lambda *_: None)
        for name, info in record["services"].items():
            os.environ[settings.VARS[f"{name}_addr"].env] = info["address"]
        # The stack's predictors require this key; in-process clients read it through the variable.
        key_file = record["auth"]["predictor_key_file"]
        os.environ[settings.VARS["predictor_api_key_file"].env] = key_file
        record["predictor_key"] = Path(key_file).read_text(encoding="utf-8").strip()
        record["data_dir"] = Path(record["data_dir"])
        yield record
    finally:
        client.close()
        local_stack.down(data_dir, say=lambda *_: None)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with _local_stack(tmp_path_factory.mktemp("stack")) as record:
        yield record


@pytest.fixture(scope="module")
def production_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, s3: S3Server
) -> Iterator[dict[str, Any]]:
    """The local stack on production parts: every service's job store on one PostgreSQL database, and the
    artifact root on the S3 server (reached through AWS_ENDPOINT_URL and credentials, as AWS would be).
    While it runs, this process's env (and so the CLI and the client) points at it."""
    bucket = s3.make_bucket("slmops-" + uuid.uuid4().hex[:8])
    env = {**s3.env(), "SLMOPS_DATABASE_URL": pg_url, "SLMOPS_ARTIFACT_ROOT": f"{bucket}/artifacts"}
    with _local_stack(tmp_path_factory.mktemp("production-stack"), env) as record:
        from s3fs import S3FileSystem

        S3FileSystem.clear_instance_cache()  # made before AWS_ENDPOINT_URL was set
        record.update(database_url=pg_url, bucket=bucket)
        yield record


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
    name = (
        "t_" + "".join(c if c.isalnum() else "_" for c in request.module.__name__.rsplit(".", 1)[-1]).lower()
    )
    return postgres.database(name[:60])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A job store database for one test, empty: a SQLite file, or this module's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    url = request.getfixturevalue("pg_url")
    empty_tables(url)
    return url


def empty_tables(url: str) -> None:
    """Remove every row of the job store's tables (when they exist) in a PostgreSQL database."""
    import psycopg
    from sqlalchemy.engine import make_url

    parts = make_url(url)
    with psycopg.connect(host=parts.host, port=parts.port, user=parts.username, dbname=parts.database,
                         autocommit=True) as conn:  # fmt: skip
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("DO $$ BEGIN IF to_regclass('jobs') IS NOT NULL THEN "
                     "TRUNCATE jobs, job_events RESTART IDENTITY; END IF; END $$")  # fmt: skip


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
