"""python -m slmops.serving: the serving service (local backend by default)."""

from __future__ import annotations

import argparse

from slmops.core import settings
from slmops.core.jobs.store import JobStore
from slmops.core.server import RunningServer, start_server
from slmops.core.service_main import run_service
from slmops.serving.deployments import Deployments
from slmops.serving.service import registration


async def start_serving_service(
    host: str = "127.0.0.1", port: int = 0, database_url: str | None = None
) -> tuple[RunningServer, Deployments]:
    deployments = Deployments(JobStore(settings.database_url("serving", database_url)))
    running = await start_server(
        "serving", [registration(deployments)], host=host, port=port, on_stop=[deployments.close]
    )
    deployments.resume()
    return running, deployments


def main() -> None:
    async def start(args: argparse.Namespace) -> RunningServer:
        running, _ = await start_serving_service(args.host, args.port, args.database_url)
        return running

    run_service("serving", start)


if __name__ == "__main__":
    main()
