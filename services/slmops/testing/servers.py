"""Throwaway PostgreSQL and S3 servers on loopback, for tests of the production path.

- `Postgres`: a cluster made by `initdb` in a temporary folder and run by
  `pg_ctl` on a free loopback port (its socket in the same folder), with
  `database(name)` to make one database per test module and `restart()` for
  fault tests. As root, the binaries run as the `postgres` user (initdb refuses
  root). Missing binaries are an error that says what to install.
- `S3Server`: moto's standalone S3 API in its own process. Code under test
  reaches it only through `AWS_ENDPOINT_URL` and credentials, as it would
  reach AWS or MinIO (`env()` gives the variables); `stop()` and `start()`
  simulate an outage (moto keeps its buckets in memory, so a restart empties them).

Nothing is left behind: `close()` stops the server and removes its folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_HINT = "install Debian's postgresql package (apt-get install postgresql), or run `make setup`"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it listened on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} after {timeout:.0f}s")


def pg_bindir() -> Path:
    """The folder of initdb and pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    raise RuntimeError(f"PostgreSQL's initdb and pg_ctl were not found; {PG_HINT}")


class Postgres:
    """One throwaway PostgreSQL cluster; `url(db)` is its SQLAlchemy URL."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="slmops-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    f"running as root, PostgreSQL needs the postgres user; {PG_HINT}"
                ) from None
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True, text=True,
                              cwd=self.folder)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        _wait_port(self.port, 30)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Make a new, empty database (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


class S3Server:
    """moto's S3 API on a free loopback port, in its own process."""

    ACCESS_KEY = "slmops-test-access"
    SECRET_KEY = "slmops-test-secret"  # moto accepts any credentials; these only make the client sign

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="slmops-s3-"))
        self._proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the child process holds it
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        _wait_port(self.port, 60, self._proc)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self.running:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def env(self) -> dict[str, str]:
        """The variables a process needs to reach this server as it would reach AWS."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip

    def make_bucket(self, name: str) -> str:
        """Create a bucket; its s3:// URI."""
        import s3fs

        fs = s3fs.S3FileSystem(
            key=self.ACCESS_KEY, secret=self.SECRET_KEY, client_kwargs={"endpoint_url": self.endpoint}
        )
        fs.mkdir(name)
        return f"s3://{name}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
