"""The local gRPC router: one stable OIP v2 gRPC address for a deployment, split like its HTTP router.

`GrpcRouterServer` serves every method of KServe's `inference.GRPCInferenceService`
(the Open Inference Protocol v2) by passing each call's request bytes, unread,
to the gRPC port of one revision's predictor, and its answer back the same way.
The revision is drawn from the HTTP router's table (`Router.choose`, each
route's `grpc` address), so both protocols share one traffic split, and each
call counts as a request in flight on its revision (`Router.tracking`): a
revision that left the split keeps its predictor until gRPC calls finish too.

What a call passes, and how it is passed on:

- the API key: with one configured (the predictors' key), every method but
  ServerLive, ServerReady and ModelReady (the predictor's open probes) needs
  the metadata `authorization: Bearer KEY`, else UNAUTHENTICATED; the
  metadata goes on to the predictor, which checks the key again;
- message sizes: requests up to the HTTP router's body limit
  (`Router.max_body_bytes`, read at each call), answers up to
  `MAX_MESSAGE_BYTES`; larger ones are RESOURCE_EXHAUSTED;
- the caller's deadline goes on as the upstream call's, and a call the caller
  cancels is cancelled upstream;
- the answer's initial metadata carries `x-slmops-revision` (on an error, the
  trailing metadata does).

A revision whose predictor cannot be reached (UNAVAILABLE with its channel not
connected) is skipped for that call and another revision with traffic is
tried; any other status, a busy predictor's UNAVAILABLE included, goes back to
the caller as it came. With no revision to answer, the caller gets UNAVAILABLE.
Methods of other services are UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

import grpc

from slmops.serving.router import REVISION_HEADER, Route, Router, bearer_matches

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = frozenset(f"/{SERVICE}/{m}" for m in ("ServerLive", "ServerReady", "ModelReady"))
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the largest message taken in or passed back, either way
# Metadata that belongs to one hop: gRPC's own and HTTP/2's pseudo-headers.
_HOP_METADATA = frozenset({"user-agent", "te", "content-type", "host", "connection"})


def _passed_on(metadata: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (k, v) for k, v in metadata
        if not k.startswith((":", "grpc-")) and k not in _HOP_METADATA and k != REVISION_HEADER
    ]  # fmt: skip


def _value(metadata: Sequence[tuple[str, Any]], key: str) -> str | None:
    for k, v in metadata:
        if k == key:
            return v.decode("latin-1") if isinstance(v, bytes) else str(v)
    return None


class GrpcRouter:
    """Forwards OIP v2 gRPC calls to the revisions in `router`'s table; runs on one event loop."""

    def __init__(self, router: Router, *, api_key: str = ""):
        self.router = router
        self._api_key = api_key
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._busy: dict[str, int] = {}  # calls in flight per predictor address

    def choose(self, skip: set[int]) -> tuple[int, Route] | None:
        """A revision with traffic and a gRPC address, drawn by the shared table's weights."""
        no_grpc = {rev for rev, route in self.router.routes().items() if not route.grpc}
        return self.router.choose(skip | no_grpc)

    def handler(self) -> grpc.GenericRpcHandler:
        forward = self.forward

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                method = details.method
                if not method.startswith(f"/{SERVICE}/"):
                    return None  # UNIMPLEMENTED

                async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    return await forward(method, request, context)

                # No (de)serializers: the request and the answer stay bytes.
                return grpc.unary_unary_rpc_method_handler(call)

        return Handler()

    async def forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = tuple(context.invocation_metadata() or ())
        if self._api_key and method not in OPEN_METHODS:
            if not bearer_matches(_value(metadata, "authorization"), self._api_key):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "incorrect or missing API key: send the metadata authorization: Bearer KEY")  # fmt: skip
        if len(request) > self.router.max_body_bytes:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request is larger than "
                                f"{self.router.max_body_bytes} bytes (max_body_bytes)")  # fmt: skip
        outgoing = _passed_on(metadata)
        tried: set[int] = set()
        failures = []
        while (choice := self.choose(tried)) is not None:
            revision, route = choice
            tried.add(revision)
            tag = ((REVISION_HEADER, str(revision)),)
            channel = self._channel(route.grpc)
            call = channel.unary_unary(method)(request, timeout=context.time_remaining(), metadata=outgoing)
            self._busy[route.grpc] = self._busy.get(route.grpc, 0) + 1
            try:
                with self.router.tracking(revision):
                    response = await call
                    initial = await call.initial_metadata()
                    trailing = await call.trailing_metadata()
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not _connected(channel):
                    log.warning("revision %d at %s did not answer gRPC (%s); trying another", revision,
                                route.grpc, exc.details())  # fmt: skip
                    failures.append(f"revision {revision}: {exc.details()}")
                    continue
                trailing = _passed_on(tuple(exc.trailing_metadata() or ())) + list(tag)
                await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(trailing))
            except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
                call.cancel()
                raise
            finally:
                self._busy[route.grpc] -= 1
            await context.send_initial_metadata((*_passed_on(tuple(initial or ())), *tag))
            context.set_trailing_metadata(tuple(_passed_on(tuple(trailing or ()))))
            return response
        detail = "; ".join(failures) or "no revision has traffic"
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"no revision of this deployment can answer ({detail})"
        )
        raise AssertionError("unreachable")  # abort raises

    def _channel(self, address: str) -> grpc.aio.Channel:
        """The channel to a predictor, made once; channels to predictors that left the table and have no
        call under way are closed."""
        live = {route.grpc for route in self.router.routes().values()}
        for stale in [a for a in self._channels if a not in live and a != address and not self._busy.get(a)]:
            asyncio.ensure_future(self._channels.pop(stale).close())
            self._busy.pop(stale, None)
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 0),  # the router picks another revision itself
            ])  # fmt: skip
        return self._channels[address]

    async def aclose(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _connected(channel: grpc.aio.Channel) -> bool:
    return channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY


class GrpcRouterServer:
    """A GrpcRouter served on host:port (0: a free port) by grpc.aio on a background thread.

    `address` (host:port) once started; `stop()` ends it. The port is bound
    exclusively: one in use is an OSError, never a port shared with another server.
    """

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 0, *, api_key: str = ""):
        self.grpc_router = GrpcRouter(router, api_key=api_key)
        self.host, self.port = host, port
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slmops-grpc-router", daemon=True)
        self._server: grpc.aio.Server | None = None

    async def _start(self) -> int:
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._server = grpc.aio.server(handlers=[self.grpc_router.handler()], options=options)
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            port = self._server.add_insecure_port(bind)
        except RuntimeError as exc:  # grpc reports a port it cannot bind so
            raise OSError(f"cannot listen on {bind} for gRPC: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {bind} for gRPC")
        await self._server.start()
        return port

    def start(self, timeout_s: float = 10.0) -> GrpcRouterServer:
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout_s)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            raise
        self.address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                await self._server.stop(grace_s)
            await self.grpc_router.aclose()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(grace_s + 5.0)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(grace_s + 5.0)
                if not self._thread.is_alive():
                    self._loop.close()


def serve_grpc_router(host: str, port: int, router: Router, *, api_key: str = "") -> GrpcRouterServer:
    """Serve OIP v2 gRPC for `router`'s table on host:port (0: a free port); returns once it listens."""
    return GrpcRouterServer(router, host, port, api_key=api_key).start()
