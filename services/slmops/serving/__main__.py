"""python -m slmops.serving: the serving service (local backend by default)."""

from __future__ import annotations

import asyncio
import logging

from slmops.core import settings
from slmops.core.jobstore import JobStore
from slmops.core.server import RunningServer, serve_forever, start_server
from slmops.core.service_main import parse_args
from slmops.serving.deployments import Deployments
from slmops.serving.service import registration


async def start_serving_service(
    host: str = "127.0.0.1", port: int = 0, database_url: str | None = None
) -> tuple[RunningServer, Deployments]:
    deployments = Deployments(JobStore(settings.database_url("serving", database_url)))
    running = await start_server("serving", [registration(deployments)], host=host, port=port,
                                 on_stop=[deployments.close])
    deployments.resume()
    return running, deployments


def main() -> None:
    args = parse_args("serving")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        running, _ = await start_serving_service(args.host, args.port, args.database_url)
        await serve_forever(running, f"SLMOPS_SERVICE_READY serving {args.host}:{running.port}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
