"""The local traffic router: one stable URL for a deployment, split between its revisions.

`Router` is an ASGI app holding a routing table {revision: Route(url, percent)}
that `set_routes` replaces at any time, from any thread. Each request goes to
one revision drawn at random by weight and is proxied to its predictor with
the same method, path, query, headers (less hop-by-hop ones) and body; the
answer comes back with its status and headers, streamed chunk by chunk as it
arrives (Server-Sent Events included), plus `x-slmops-revision`.

A revision whose predictor cannot be reached, or that broke off before
answering, is skipped for that request and another revision with traffic is
tried: predictors' routes have no side effects, so sending a request again is
safe while nothing has gone back to the caller. When no revision can answer,
the caller gets 503 in OpenAI's error shape with Retry-After. `GET
/router/health` lists the table. `serve_router` runs a router with uvicorn in
a background thread.

What a request passes before a predictor sees it, cheapest first:

- the API key: with one configured (the predictors' key, core/predictor_key.py),
  every request but the health path needs `Authorization: Bearer KEY`, else
  401 with `WWW-Authenticate: Bearer`, before any of its body is read;
- the body limit (the predictors' own, `max_body_bytes`): a Content-Length
  over it is 413 at once; a body that streams past it is 413 as soon as it
  does, and no more than the limit is ever held;
- the body's deadline (`body_timeout_s` for the whole body): a slow upload
  gets 408.

These answers end the connection, so the rest of a refused body is not read.

A route may also name its predictor's OIP v2 gRPC address (`Route.grpc`): the
deployment's gRPC router (grpc_router.py) draws from the same table, and its
calls count in `in_flight` beside HTTP requests (`tracking`).
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import uvicorn

from slmops.core import net
from slmops.core.errors import collect
from slmops.core.net import bind

log = logging.getLogger(__name__)

REVISION_HEADER = "x-slmops-revision"
HEALTH_PATH = "/router/health"
# RFC 9110 7.6.1; `host` too, since the upstream has its own.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host",
})  # fmt: skip
# Failures where the caller has had nothing yet and the upstream did not answer.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
              httpx.WriteError)  # fmt: skip
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=60.0)
BODY_TIMEOUT_S = 30.0  # the longest a request body may take to arrive whole


def default_max_body_bytes() -> int:
    """The predictor's own default body limit (a router in front of it takes no more)."""
    return net.MAX_BODY_BYTES


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Route:
    url: str  # the revision's predictor, e.g. http://127.0.0.1:8123
    percent: int
    grpc: str = ""  # its predictor's OIP v2 gRPC address (host:port), for the gRPC router (grpc_router.py)


def check_routes(routes: Mapping[int, Route | tuple[str, int]]) -> dict[int, Route]:
    """The table as {revision: Route}; InvalidSpec naming every problem when it is not a valid split."""
    table = {int(rev): r if isinstance(r, Route) else Route(*r) for rev, r in routes.items()}
    problems = []
    for rev, route in sorted(table.items()):
        if not route.url.startswith(("http://", "https://")):
            problems.append((f"routes[{rev}].url", f"must be an http(s) URL, not {route.url!r}"))
        if not 0 <= route.percent <= 100:
            problems.append((f"routes[{rev}].percent", f"must be 0-100, not {route.percent}"))
        if route.grpc and not route.grpc.rpartition(":")[2].isdigit():
            problems.append((f"routes[{rev}].grpc", f"must be host:port, not {route.grpc!r}"))
    total = sum(r.percent for r in table.values())
    if table and total != 100:
        problems.append(("routes", f"percents must sum to 100, not {total}"))
    collect(problems)
    return table


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named = {
        token.strip().lower()
        for key, value in headers if key.lower() == b"connection"
        for token in value.split(b",")
    }  # fmt: skip
    return named | {h.encode() for h in _HOP_BY_HOP}


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    drop = _hop_by_hop(headers)
    return [(k, v) for k, v in headers if k.lower() not in drop]


class Router:
    """An ASGI app that splits one deployment's traffic between its revisions by percent."""

    def __init__(
        self,
        routes: Mapping[int, Route | tuple[str, int]] | None = None,
        *,
        rng: random.Random | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry_after_s: int = 1,
        api_key: str = "",
        max_body_bytes: int | None = None,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ):
        self._api_key = api_key
        self.max_body_bytes = max_body_bytes if max_body_bytes is not None else default_max_body_bytes()
        self.body_timeout_s = body_timeout_s
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self._routes: dict[int, Route] = check_routes(routes or {})
        self._timeout = timeout
        self._retry_after_s = retry_after_s
        self._client: httpx.AsyncClient | None = None
        self._in_flight: dict[int, int] = {}

    def in_flight(self, revision: int) -> int:
        """Requests sent to `revision` that have not finished (its predictor may stop once this is 0)."""
        with self._lock:
            return self._in_flight.get(revision, 0)

    def _count(self, revision: int, delta: int) -> None:
        with self._lock:
            self._in_flight[revision] = self._in_flight.get(revision, 0) + delta

    @contextmanager
    def tracking(self, revision: int) -> Iterator[None]:
        """Count a request sent to `revision` as in flight while the block runs (gRPC calls use it too)."""
        self._count(revision, 1)
        try:
            yield
        finally:
            self._count(revision, -1)

    def set_routes(self, routes: Mapping[int, Route | tuple[str, int]]) -> None:
        """Replace the table; requests already under way finish on the revision they were sent to."""
        table = check_routes(routes)
        with self._lock:
            self._routes = table

    def routes(self) -> dict[int, Route]:
        with self._lock:
            return dict(self._routes)

    def choose(self, skip: set[int] = frozenset()) -> tuple[int, Route] | None:
        """A revision with traffic, drawn by weight, not in `skip`; None when there is none."""
        with self._lock:
            live = [(rev, r) for rev, r in sorted(self._routes.items()) if r.percent > 0 and rev not in skip]
            if not live:
                return None
            return self._rng.choices(live, weights=[r.percent for _, r in live])[0]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] == HEALTH_PATH and scope["method"] in ("GET", "HEAD"):
                await self._health(send)
            elif self._api_key and not bearer_matches(_header(scope, b"authorization"), self._api_key):
                await _refuse(send, 401, "Incorrect or missing API key: send Authorization: Bearer KEY.",
                              "invalid_api_key", [(b"www-authenticate", b"Bearer")])  # fmt: skip
            else:
                await self._proxy(scope, receive, send)
        # websockets are not served: predictors speak plain HTTP

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _health(self, send: Any) -> None:
        table = self.routes()
        revisions = [
            {"revision": rev, "url": r.url, **({"grpc": r.grpc} if r.grpc else {}), "percent": r.percent}
            for rev, r in sorted(table.items())
        ]
        ready = any(r.percent > 0 for r in table.values())
        await _send_json(send, 200 if ready else 503, {"ready": ready, "revisions": revisions})

    async def _too_large(self, send: Any) -> None:
        await _refuse(send, 413, f"The request body is larger than {self.max_body_bytes} bytes "
                      "(max_body_bytes).", "request_too_large")  # fmt: skip

    async def _proxy(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large(send)
            return
        try:
            with anyio.fail_after(self.body_timeout_s):
                body = await _read_body(receive, self.max_body_bytes)
        except _TooLarge:
            await self._too_large(send)
            return
        except TimeoutError:
            await _refuse(send, 408, f"The request body did not arrive within {self.body_timeout_s:g} s "
                          "(body_timeout_s).", "request_timeout")  # fmt: skip
            return
        if body is None:
            return  # the caller left before sending its request
        if self._client is None:
            # No cap on connections: a predictor admits or refuses (429) load itself.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=limits, trust_env=False)
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        target = path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        headers = _end_to_end(scope["headers"])
        tried: set[int] = set()
        failures = []
        while (choice := self.choose(tried)) is not None:
            revision, route = choice
            tried.add(revision)
            request = httpx.Request(scope["method"], route.url.rstrip("/") + target, headers=headers,
                                    content=body)  # fmt: skip
            self._count(revision, 1)
            try:
                try:
                    upstream = await self._client.send(request, stream=True)
                except _RETRYABLE as exc:
                    log.warning("revision %d at %s did not answer (%s); trying another", revision, route.url,
                                type(exc).__name__)  # fmt: skip
                    failures.append(f"revision {revision}: {type(exc).__name__}")
                    continue
                except httpx.TimeoutException:
                    await _send_error(send, 504, f"revision {revision} did not answer in time", revision)
                    return
                try:
                    await _relay(upstream, revision, receive, send)
                finally:
                    await upstream.aclose()
                return
            finally:
                self._count(revision, -1)
        detail = "; ".join(failures) or "no revision has traffic"
        await _send_error(send, 503, f"no revision of this deployment can answer ({detail})", None,
                          retry_after=self._retry_after_s)  # fmt: skip


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def bearer_matches(header: str | None, key: str) -> bool:
    """Whether an `Authorization` value is `Bearer KEY` (compared in constant time)."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body (kept to send again on another revision); None if the caller left.

    _TooLarge as soon as it passes `limit` bytes: what was read is dropped, the rest is never read.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _relay(upstream: httpx.Response, revision: int, receive: Any, send: Any) -> None:
    """Pass the upstream's answer on as it arrives; stop reading it when the caller goes away."""
    own = REVISION_HEADER.encode()
    headers = [(k, v) for k, v in _end_to_end(upstream.headers.raw) if k.lower() != own]
    headers.append((own, str(revision).encode()))
    await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
    async with anyio.create_task_group() as group:

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch_disconnect)
        try:
            # Raw bytes: the body keeps the upstream's content-encoding, as its headers say.
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            # The caller already has part of the answer: end the connection so it sees the break.
            log.warning("revision %d broke off its answer: %s", revision, exc)
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        group.cancel_scope.cancel()


async def _send_json(send: Any, status: int, payload: Any, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _refuse(
    send: Any, status: int, message: str, code: str, extra: list[tuple[bytes, bytes]] = ()
) -> None:
    """An OpenAI-style client error from the router itself; the connection ends after it."""
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    await _send_json(send, status, payload, [*extra, (b"connection", b"close")])


async def _send_error(
    send: Any, status: int, message: str, revision: int | None, retry_after: int = 0
) -> None:
    """An OpenAI-style error from the router itself."""
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after else []
    if revision is not None:
        extra.append((REVISION_HEADER.encode(), str(revision).encode()))
    code = "service_unavailable" if status == 503 else "upstream_timeout"
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    await _send_json(send, status, payload, extra)


class RouterServer:
    """A router served by uvicorn on a background thread; `url` once started, `stop()` to end it."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 0):
        self.router = router
        self._sock = bind(host, port, backlog=1024)
        bound = self._sock.getsockname()[1]
        self.url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
        config = uvicorn.Config(router, lifespan="on", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="slmops-router", daemon=True)  # fmt: skip

    def start(self, timeout_s: float = 10.0) -> RouterServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the router did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._sock.close()


def serve_router(host: str, port: int, router: Router) -> RouterServer:
    """Serve `router` on host:port (0: a free port) in a background thread; returns once it listens."""
    return RouterServer(router, host, port).start()
