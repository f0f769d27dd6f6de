"""`python -m slmops.<stage>`: start one job service with its embedded defaults.

With `--log-file` (what `slmops up` passes) the service writes its log there,
rotated at SLMOPS_LOG_MAX_BYTES with 3 older files kept, readable by this user
only; whatever reaches its stdout or stderr afterwards (the READY line, native
libraries, a thread's traceback) becomes lines of that log. Without it, it
logs to stderr (a container's log).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from slmops.core import private_files, secret_refs, settings
from slmops.core.jobs.ray_jobs import RayJobs
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import Registration, RunningServer, serve_forever, start_server


def parse_args(service: str, argv: list[str] | None = None) -> argparse.Namespace:
    default = settings.service_addr(service)
    parser = argparse.ArgumentParser(
        prog=f"python -m slmops.{service}", description=f"slmops {service} service"
    )
    parser.add_argument("--host", default=settings.get("host"), help="address to bind (SLMOPS_HOST)")
    parser.add_argument("--port", type=int, default=int(default.rsplit(":", 1)[1]), help="port (0: any free)")
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL of the job store")
    parser.add_argument("--ray-address", default=None, help="Ray Jobs API address")
    parser.add_argument(
        "--log-file",
        default=None,
        help="write the log (and stdout/stderr) to this file, rotated at SLMOPS_LOG_MAX_BYTES; default: stderr",
    )
    return parser.parse_args(argv)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUTPUT_LINE_MAX = 64 * 1024


def log_to_file(path: Path) -> None:
    """Log to a rotating private file, and turn what reaches stdout and stderr into its lines."""
    handler = private_files.RotatingLogHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    # A handler's own error would be written to stderr, which is the log again.
    logging.raiseExceptions = False
    _route_output(logging.getLogger("slmops.output"))


def _route_output(logger: logging.Logger) -> None:
    """fd 1 and 2 become a pipe whose lines a thread logs; at exit what is left in it is logged too."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with open(read_fd, "rb") as pipe:
            while raw := pipe.readline(OUTPUT_LINE_MAX):  # a line without an end comes in pieces
                logger.info("%s", raw.decode(errors="replace").rstrip())

    thread = threading.Thread(target=pump, name="output-to-log", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)  # the pipe's last writer gone (children aside), the thread reads to its end
        os.close(null)
        thread.join(timeout=2.0)

    atexit.register(drain)


async def start_stage_service(
    stage: str,
    servicer_factory: Callable[[StageJobs], Registration],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    database_url: str | None = None,
    ray_address: str | None = None,
    poll_s: float | None = None,
) -> tuple[RunningServer, StageJobs]:
    """Build the stage's job core and serve it; used by __main__ and by tests."""
    store = JobStore(settings.database_url(stage, database_url))
    jobs = StageJobs(stage, store, RayJobs(ray_address), poll_s=poll_s)
    registration = servicer_factory(jobs)
    running = await start_server(stage, [registration], host=host, port=port, on_stop=[jobs.close])
    jobs.resume()
    return running, jobs


def run_service(
    service: str,
    start: Callable[[argparse.Namespace], Awaitable[RunningServer]],
    argv: list[str] | None = None,
) -> None:
    """Parse the common flags, start the service, print its READY line, serve until SIGTERM."""
    args = parse_args(service, argv)
    if args.log_file:
        log_to_file(Path(args.log_file))
    else:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    secret_refs.redact_logs()  # a database URL's password never reaches the log

    async def run() -> None:
        running = await start(args)
        await serve_forever(running, f"SLMOPS_SERVICE_READY {service} {args.host}:{running.port}")

    if not args.log_file:
        asyncio.run(run())
        return
    try:
        asyncio.run(run())
    except Exception:
        # Logged here, not left to stderr, so the traceback is in the log file before the process ends.
        logging.getLogger(__name__).exception("the %s service stopped on an error", service)
        raise SystemExit(1) from None


def main(
    stage: str, servicer_factory: Callable[[StageJobs], Registration], argv: list[str] | None = None
) -> None:
    """`python -m slmops.<stage>` for a job stage."""

    async def start(args: argparse.Namespace) -> RunningServer:
        running, _ = await start_stage_service(
            stage,
            servicer_factory,
            host=args.host,
            port=args.port,
            database_url=args.database_url,
            ray_address=args.ray_address,
        )
        return running

    run_service(stage, start, argv)
