"""Submitting work to Ray through the Jobs API, the same way locally and on KubeRay.

A job's entrypoint is `python -m slmops.core.jobs.entry <stage>`; its config,
output URI and the caller's W3C trace context travel as environment variables
of the job's runtime environment, so the job continues the caller's trace.

Every job's driver is submitted with the entrypoint resources the settings
give (SLMOPS_JOB_ENTRYPOINT_CPUS, SLMOPS_JOB_ENTRYPOINT_MEMORY): on KubeRay,
whose head offers no CPUs, one CPU places drivers on a worker and lets the
autoscaler add one when none is up. Those settings and the worker groups
(SLMOPS_RAY_WORKER_GROUPS) are read when the client is made, so a malformed
value stops the service at start-up, naming the variable.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import shlex
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from slmops.core import settings
from slmops.core.errors import Unavailable
from slmops.core.ray_capacity import NodeResources, WorkerGroup, worker_groups

log = logging.getLogger(__name__)

RUNNING_STATES = {"PENDING", "RUNNING"}
NODES_LIMIT = 10_000  # the most nodes Ray's state API returns in one answer
AGENT_WAIT_S = 60.0  # how long a submission waits for the job agent of a head that has just started
RAY_THREADS = 8  # the threads Ray calls run on (`call`), apart from those of the database calls
# Variables a job inherits from the service so it writes where the service reads.
_FORWARDED = (
    "SLMOPS_DATA_DIR",
    "SLMOPS_ARTIFACT_ROOT",
    "SLMOPS_ALLOWED_ROOTS",
    "SLMOPS_ALLOWED_SCHEMES",
    "SLMOPS_ALLOWED_SECRET_ENV",
    "SLMOPS_SECRET_HOSTS",
    "SLMOPS_PLAIN_HTTP_HOSTS",
    "SLMOPS_EGRESS_ALLOW",
    "SLMOPS_PREDICTOR_API_KEY_FILE",
    "AWS_ENDPOINT_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "HF_HUB_OFFLINE",
)


@dataclass(frozen=True)
class EntrypointResources:
    """What every job's driver reserves; 0 reserves nothing (Ray's default)."""

    cpus: float = 0.0
    memory: int = 0  # bytes


def entrypoint_resources(cpus: str | None = None, memory: str | None = None) -> EntrypointResources:
    """The drivers' resources from the settings; ValueError naming the variable when one is malformed."""
    values: list[float] = []
    for name, override, integer in (
        ("job_entrypoint_cpus", cpus, False),
        ("job_entrypoint_memory", memory, True),
    ):
        text = settings.get(name, override).strip() or "0"
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = -1
        if not value >= 0 or value == float("inf"):
            kind = "a whole number of bytes" if integer else "a number of CPUs"
            raise ValueError(f"{settings.VARS[name].env} must be {kind} >= 0, not {text!r}")
        values.append(value)
    return EntrypointResources(float(values[0]), int(values[1]))


def ray_timeout(override: str | None = None) -> float:
    """Seconds one request to the Jobs API may take; ValueError naming SLMOPS_RAY_TIMEOUT_S when malformed."""
    text = settings.get("ray_timeout_s", override).strip()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(
            f"{settings.VARS['ray_timeout_s'].env} must be a number of seconds > 0, not {text!r}"
        )
    return value


_T = TypeVar("_T")
_pool = ThreadPoolExecutor(max_workers=RAY_THREADS, thread_name_prefix="slmops-ray")


async def call(fn: Callable[..., _T], *args: Any, deadline: float | None = None, **kwargs: Any) -> _T:
    """fn(*args, **kwargs) on the Ray threads, in the caller's context; Unavailable past the deadline.

    Each request fn makes times out by itself (SLMOPS_RAY_TIMEOUT_S); the deadline (by default three
    of them: a call, and the two version probes of a client made on the way) is a backstop, after
    which the caller stops waiting and a call still queued behind hung ones is dropped.
    """
    limit = deadline if deadline is not None else 3 * ray_timeout()
    context = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(
        _pool, context.run, functools.partial(fn, *args, **kwargs)
    )
    # asyncio.wait, not wait_for: Python 3.11's wait_for drops a cancellation that arrives as the
    # call ends, which would leave a cancelled follower polling on.
    try:
        done, _ = await asyncio.wait({future}, timeout=limit)
    except asyncio.CancelledError:
        future.cancel()  # a call still queued is dropped
        raise
    if not done:
        future.cancel()
        raise Unavailable(f"Ray did not answer {getattr(fn, '__name__', 'a call')} within {limit:g} s")
    return future.result()


class RayJobLost(Unavailable):
    """The Jobs API does not know the job (HTTP 404): its head restarted, or the job was removed."""

    def __init__(self, submission_id: str):
        self.submission_id = submission_id
        super().__init__(f"Ray no longer knows job {submission_id}: the Ray head restarted or the job was "
                         "removed; create it again")  # fmt: skip


def _unknown_job(exc: BaseException) -> bool:
    """Whether a Jobs API error says the job does not exist (Ray answers 404 'Job ... does not exist')."""
    text = str(exc)
    return "status code 404" in text or "does not exist" in text


def _short(exc: BaseException) -> str:
    """An error of Ray's (or of a server posing as its dashboard) cut short for a message."""
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


@functools.cache
def _client_class() -> type:
    """Ray's JobSubmissionClient with a timeout on each request it makes (made once, on first use)."""
    import aiohttp
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def __init__(self, address: str, timeout_s: float):
            self.timeout_s = timeout_s  # before the constructor's version probes
            super().__init__(address)

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

        async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
            # Ray's own opens its websocket with aiohttp's default timeout (five minutes for the
            # handshake): the handshake is bounded here like any request; the open stream is not.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
            async with aiohttp.ClientSession(cookies=self._cookies, headers=self._headers,
                                             timeout=timeout) as session:  # fmt: skip
                ws = await session.ws_connect(f"{self._address}/api/jobs/{job_id}/logs/tail",
                                              ssl=self._ssl_context or True)  # fmt: skip
                async for message in ws:  # ends when the server closes the stream
                    if message.type == aiohttp.WSMsgType.TEXT:
                        yield message.data
                    elif message.type == aiohttp.WSMsgType.ERROR:
                        raise RuntimeError(f"WebSocket error for job {job_id}: {ws.exception()}")
                if ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
                    raise RuntimeError(f"WebSocket connection closed unexpectedly with code {ws.close_code}")

    return TimedJobSubmissionClient


def _no_agent_yet(exc: BaseException) -> bool:
    """A head that has just started has no job agent yet: the one submission error worth a wait."""
    return not isinstance(exc, Unavailable) and "No available agent" in str(exc)


@dataclass
class RayJobStatus:
    state: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str


class RayJobs:
    """A thin client of the Ray Jobs API at one address."""

    def __init__(self, address: str | None = None, *, entrypoint: EntrypointResources | None = None,
                 groups: tuple[WorkerGroup, ...] | None = None, timeout_s: float | None = None):  # fmt: skip
        self.address = settings.ray_address(address)
        self.entrypoint = entrypoint if entrypoint is not None else entrypoint_resources()
        self.worker_groups = groups if groups is not None else worker_groups()
        self.timeout_s = timeout_s if timeout_s is not None else ray_timeout()
        self._client: Any = None
        self._lock = threading.Lock()
        self._unreachable: tuple[float, str] | None = None  # (when, why) the last client could not be made

    def _jobs(self) -> Any:
        with self._lock:
            if self._client is None:
                # Calls queued behind one that waited out its timeout on an unanswering Ray fail at
                # once, for one timeout, rather than each waiting out its own (a quick refusal is
                # cheap to try again, and is).
                if self._unreachable and time.monotonic() - self._unreachable[0] < self.timeout_s:
                    raise Unavailable(self._unreachable[1])
                start = time.monotonic()
                try:
                    self._client = _client_class()(self.address, self.timeout_s)
                except Exception as exc:  # connection refused or timed out, bad address
                    message = f"Ray Jobs API at {self.address} is not reachable: {_short(exc)}"
                    if time.monotonic() - start >= self.timeout_s / 2:
                        self._unreachable = (time.monotonic(), message)
                    raise Unavailable(message) from exc
                self._unreachable = None
            return self._client

    def submit(
        self,
        stage: str,
        job_id: str,
        config: dict[str, Any],
        output_uri: str,
        traceparent: str = "",
        resources: dict[str, float] | None = None,
        extra_env: dict[str, str] | None = None,
        restart: int = 0,
    ) -> str:
        """Start the stage's job (its `restart`-th restart when above 0); returns the Ray submission id."""
        import os

        env = {name: os.environ[name] for name in _FORWARDED if name in os.environ}
        env.update(
            {
                "SLMOPS_JOB_ID": job_id,
                "SLMOPS_JOB_CONFIG": json.dumps(config),
                "SLMOPS_JOB_OUTPUT": output_uri,
                "TRACEPARENT": traceparent,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra_env or {})
        entrypoint = f"{shlex.quote(settings.job_python())} -m slmops.core.jobs.entry {shlex.quote(stage)}"
        submission_id = f"slmops-{job_id}" + (f"-r{restart}" if restart else "")
        kwargs = self.entrypoint_kwargs(resources)
        retrying = Retrying(retry=retry_if_exception(_no_agent_yet), wait=wait_fixed(1.0),
                            stop=stop_after_delay(AGENT_WAIT_S), reraise=True)  # fmt: skip
        try:
            return retrying(
                lambda: self._jobs().submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env={"env_vars": env},
                    metadata={"slmops_stage": stage, "slmops_job_id": job_id},
                    **kwargs,
                )
            )
        except Unavailable:
            raise
        except Exception as exc:
            if "already exists" in str(exc):
                # Submission ids are deterministic: another replica (one whose lease ran out
                # while it submitted) started this very job. Ray ran it once; follow that one.
                log.info("Ray job %s was submitted already; following it", submission_id)
                return submission_id
            raise Unavailable(
                f"could not submit the {stage} job to Ray at {self.address}: {_short(exc)}"
            ) from exc

    def entrypoint_kwargs(self, resources: dict[str, float] | None = None) -> dict[str, Any]:
        """submit_job's entrypoint_* arguments: the job's own resources, else the drivers' settings."""
        resources = resources or {}
        kwargs: dict[str, Any] = {}
        cpus = resources.get("cpus") or self.entrypoint.cpus
        if cpus:
            kwargs["entrypoint_num_cpus"] = cpus
        if resources.get("gpus"):
            kwargs["entrypoint_num_gpus"] = resources["gpus"]
        memory = int(resources.get("memory") or self.entrypoint.memory)
        if memory:
            kwargs["entrypoint_memory"] = memory
        return kwargs

    def status(self, submission_id: str) -> RayJobStatus:
        """The job's state; RayJobLost when Ray does not know it, Unavailable when Ray cannot say."""
        try:
            info = self._jobs().get_job_info(submission_id)
        except Exception as exc:
            if _unknown_job(exc):
                raise RayJobLost(submission_id) from exc
            raise Unavailable(f"Ray job {submission_id} status unavailable: {_short(exc)}") from exc
        return RayJobStatus(str(info.status).split(".")[-1], info.message or "")

    def logs(self, submission_id: str) -> str:
        """The job's whole log in one answer (what `tail` streams, for when the stream cannot be had)."""
        try:
            return self._jobs().get_job_logs(submission_id)
        except Exception as exc:
            if _unknown_job(exc):
                raise RayJobLost(submission_id) from exc
            raise Unavailable(f"Ray job {submission_id} logs unavailable: {_short(exc)}") from exc

    async def tail(self, submission_id: str) -> AsyncIterator[str]:
        """The job's log from its start, chunk by chunk as the driver writes it (Ray's `tail_job_logs`,
        a websocket); it ends once the job has ended and its last line was sent. Unavailable when the
        stream cannot be opened or breaks off."""
        client = await call(self._jobs)
        try:
            async for chunk in client.tail_job_logs(submission_id):
                yield chunk
        except Exception as exc:
            raise Unavailable(f"Ray job {submission_id} log stream broke off: {_short(exc)}") from exc

    def find(self, stage: str, job_id: str) -> str:
        """The submission id of job_id's Ray job if Ray has it, else ''; Unavailable when Ray cannot say."""
        submission_id = f"slmops-{job_id}"
        try:
            self._jobs().get_job_info(submission_id)
        except Exception as exc:
            if _unknown_job(exc):
                return ""
            raise Unavailable(f"Ray job {submission_id} cannot be looked up: {_short(exc)}") from exc
        return submission_id

    def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job: True when it stopped it, False when it could not (or it had ended)."""
        try:
            return bool(self._jobs().stop_job(submission_id))
        except Exception as exc:
            log.warning("could not stop Ray job %s: %s", submission_id, _short(exc))
            return False

    def cluster_resources(self) -> dict[str, float]:
        """Total CPU and GPU of the cluster's alive nodes; Unavailable when Ray cannot be asked."""
        totals = {"CPU": 0.0, "GPU": 0.0}
        for node in self.node_resources():
            for name in totals:
                totals[name] += float(node.resources.get(name, 0.0))
        return totals

    def node_resources(self) -> list[NodeResources]:
        """Each alive node: whether it is the head, and its total CPU, GPU and memory.

        Asks Ray's state API (`GET /api/v0/nodes`, what `ray list nodes` reads)
        through the Jobs client, so the request carries the client's headers,
        Ray's auth token included. Unavailable when it cannot be asked.
        """
        try:
            client = self._jobs()
            params = {"limit": NODES_LIMIT, "timeout": 5}  # timeout: the dashboard's own wait on the GCS
            response = client._do_request(
                "GET", "/api/v0/nodes", params=params, timeout=min(10.0, self.timeout_s)
            )
            body = response.json()
            if response.status_code != 200 or not body.get("result"):
                raise RuntimeError(f"HTTP {response.status_code}: {body.get('msg') or response.text[:200]}")
            nodes = body["data"]["result"]["result"]
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"Ray cluster resources at {self.address} unavailable: {_short(exc)}") from exc
        alive = [node for node in nodes if node.get("state") == "ALIVE"]
        return [
            NodeResources(bool(node.get("is_head_node")),
                          {name: float((node.get("resources_total") or {}).get(name, 0.0))
                           for name in ("CPU", "GPU", "memory")})
            for node in alive
        ]  # fmt: skip
