"""Stand-ins shared by unit tests for what cannot run in them."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slmops.core.errors import Unavailable
from slmops.core.jobs.ray_jobs import RayJobStatus


class FakeRay:
    """What StageJobs and the capacity check use of RayJobs, with no cluster behind it."""

    def __init__(self) -> None:
        self.total: dict[str, float] | None = {"CPU": 4.0, "GPU": 0.0}  # None: Ray cannot be asked
        self.submitted: list[str] = []
        self.stopped: set[str] = set()

    def cluster_resources(self) -> dict[str, float]:
        if self.total is None:
            raise Unavailable("Ray cluster resources at http://nowhere:8265 unavailable")
        return dict(self.total)

    def submit(self, stage, job_id, *args, **kwargs) -> str:
        self.submitted.append(job_id)
        return f"ray-{job_id}"

    def status(self, submission_id: str) -> RayJobStatus:
        return RayJobStatus("STOPPED" if submission_id in self.stopped else "PENDING", "")

    def logs(self, submission_id: str) -> str:
        return ""

    async def tail(self, submission_id: str) -> AsyncIterator[str]:
        """These jobs write no log: a stream that ends at once, as Ray's does for a job without output."""
        for chunk in ():
            yield chunk

    def stop(self, submission_id: str) -> bool:
        self.stopped.add(submission_id)
        return True

    def find(self, stage: str, job_id: str) -> str:
        return ""


# What Ray 2.60's dashboard answers to the version probe (GET /api/version).
RAY_VERSION = {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}


class JsonHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers JSON and logs nothing: the base of the stand-ins for Ray's dashboard."""

    def reply(self, body: Any, status: int = 200) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """handler served on a free loopback port until the block ends; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
