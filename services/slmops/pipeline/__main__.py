"""python -m slmops.pipeline: the pipeline service."""

from __future__ import annotations

import asyncio
import logging

from slmops.core import settings
from slmops.core.jobstore import JobStore
from slmops.core.server import RunningServer, serve_forever, start_server
from slmops.core.service_main import parse_args
from slmops.pipeline.service import PipelineRuns, registration


async def start_pipeline_service(
    host: str = "127.0.0.1", port: int = 0, database_url: str | None = None
) -> tuple[RunningServer, PipelineRuns]:
    runs = PipelineRuns(JobStore(settings.database_url("pipeline", database_url)))
    runs.fail_interrupted()
    running = await start_server("pipeline", [registration(runs)], host=host, port=port, on_stop=[runs.close])
    return running, runs


def main() -> None:
    args = parse_args("pipeline")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        running, _ = await start_pipeline_service(args.host, args.port, args.database_url)
        await serve_forever(running, f"SLMOPS_SERVICE_READY pipeline {args.host}:{running.port}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
