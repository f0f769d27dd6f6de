"""RayJobs on the wire through Ray's own JobSubmissionClient: submissions that wait for a starting
head's job agent, and a job's log followed over the dashboard's websocket (`tail_job_logs`).

The dashboard is a stand-in on loopback (aiohttp, as Ray's own dashboard is) answering as Ray
2.60's does: the version probe, job submissions, and `/api/jobs/{id}/logs/tail`.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from slmops.core.errors import Unavailable
from slmops.core.jobs import ray_jobs
from slmops.core.jobs.ray_jobs import RayJobs
from tests.unit._fakes import RAY_VERSION

NO_AGENT = "No available agent to submit job, please try again later."


class Dashboard:
    """Answers `no_agent` submissions with Ray's 'no agent yet' error, then accepts; streams `chunks`."""

    def __init__(self, no_agent: int = 0, chunks: tuple[str, ...] = (), submit_error: str = ""):
        self.no_agent, self.chunks, self.submit_error = no_agent, chunks, submit_error
        self.submissions = 0
        self.app = web.Application()
        self.app.router.add_get("/api/version", self.version)
        self.app.router.add_post("/api/jobs/", self.submit)
        self.app.router.add_get("/api/jobs/{job_id}/logs/tail", self.tail)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(RAY_VERSION)

    async def submit(self, request: web.Request) -> web.Response:
        self.submissions += 1
        body = await request.json()
        if self.submit_error:
            return web.Response(text=self.submit_error, status=400)
        if self.no_agent:
            self.no_agent -= 1
            return web.Response(text=NO_AGENT, status=500)
        return web.json_response({"job_id": body["submission_id"], "submission_id": body["submission_id"]})

    async def tail(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["job_id"] != "slmops-known":
            return web.Response(text="Job does not exist", status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for chunk in self.chunks:
            await ws.send_str(chunk)
            await asyncio.sleep(0.01)
        await ws.close()  # the job ended and its last line was sent
        return ws


@pytest.fixture
async def serve():
    runners = []

    async def start(dashboard: Dashboard) -> str:
        runner = web.AppRunner(dashboard.app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_job_log_is_streamed_chunk_by_chunk_until_the_job_ends(serve):
    chunks = ("SLMOPS_PROGRESS {}\n", "line 2\n", "SLMOPS_RESULT {}\n")
    ray = RayJobs(await serve(Dashboard(chunks=chunks)))
    assert [chunk async for chunk in ray.tail("slmops-known")] == list(chunks)


async def test_a_log_stream_that_cannot_be_opened_is_unavailable(serve):
    ray = RayJobs(await serve(Dashboard()))
    with pytest.raises(Unavailable, match="slmops-gone log stream broke off"):
        [chunk async for chunk in ray.tail("slmops-gone")]


async def test_a_submission_waits_for_the_job_agent_of_a_head_that_has_just_started(serve):
    dashboard = Dashboard(no_agent=2)
    ray = RayJobs(await serve(dashboard))
    submitted = await asyncio.to_thread(ray.submit, "training", "train-1", {}, "file:///out")
    assert submitted == "slmops-train-1" and dashboard.submissions == 3


async def test_a_head_whose_agent_never_comes_is_unavailable_after_a_bound(serve, monkeypatch):
    monkeypatch.setattr(ray_jobs, "AGENT_WAIT_S", 1.5)
    dashboard = Dashboard(no_agent=100)
    ray = RayJobs(await serve(dashboard))
    with pytest.raises(Unavailable, match="No available agent"):
        await asyncio.to_thread(ray.submit, "training", "train-1", {}, "file:///out")
    assert 2 <= dashboard.submissions <= 3


async def test_other_submission_errors_fail_at_once(serve):
    dashboard = Dashboard(submit_error="entrypoint_num_cpus must be >= 0")
    ray = RayJobs(await serve(dashboard))
    with pytest.raises(Unavailable, match="could not submit the training job"):
        await asyncio.to_thread(ray.submit, "training", "train-1", {}, "file:///out")
    assert dashboard.submissions == 1
