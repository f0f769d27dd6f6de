"""python -m slmops.pipeline: the pipeline service."""

from __future__ import annotations

import argparse

from slmops.core import settings
from slmops.core.jobs.store import JobStore
from slmops.core.server import RunningServer, start_server
from slmops.core.service_main import run_service
from slmops.pipeline.service import PipelineRuns, registration


async def start_pipeline_service(
    host: str = "127.0.0.1", port: int = 0, database_url: str | None = None
) -> tuple[RunningServer, PipelineRuns]:
    runs = PipelineRuns(JobStore(settings.database_url("pipeline", database_url)))
    running = await start_server("pipeline", [registration(runs)], host=host, port=port, on_stop=[runs.close])
    runs.resume()  # runs in flight when the service stopped are resumed
    return running, runs


def main() -> None:
    async def start(args: argparse.Namespace) -> RunningServer:
        running, _ = await start_pipeline_service(args.host, args.port, args.database_url)
        return running

    run_service("pipeline", start)


if __name__ == "__main__":
    main()
