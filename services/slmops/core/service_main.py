"""`python -m slmops.<stage>`: start one job service with its embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable

from slmops.core import secret_refs, settings
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
    return parser.parse_args(argv)


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret_refs.redact_logs()  # a database URL's password never reaches the log

    async def run() -> None:
        running = await start(args)
        await serve_forever(running, f"SLMOPS_SERVICE_READY {service} {args.host}:{running.port}")

    asyncio.run(run())


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
