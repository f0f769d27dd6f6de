"""One server interceptor that turns domain errors into gRPC status codes.

InvalidSpec -> INVALID_ARGUMENT (naming the field), NotFound -> NOT_FOUND,
Conflict -> FAILED_PRECONDITION, AlreadyExists -> ALREADY_EXISTS,
Unavailable -> UNAVAILABLE, and so does an outage of the job store's database
(a PostgreSQL restart: clients retry UNAVAILABLE). Anything else is logged with its traceback and
answered INTERNAL with a short message: never a stack trace, never UNKNOWN.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound, Unavailable
from slmops.core.grpc_handlers import wrap_handler
from slmops.core.jobs.store import is_transient

log = logging.getLogger(__name__)

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    for error_type, code in _CODES:
        if isinstance(exc, error_type):
            return code, str(exc)
    if is_transient(exc):
        log.warning("%s: the job store is unreachable: %s", method, exc)
        return grpc.StatusCode.UNAVAILABLE, "the job store is unreachable for now; try again"
    log.exception("unexpected error in %s", method)
    return grpc.StatusCode.INTERNAL, f"internal error in {method.rsplit('/', 1)[-1]}; see the service log"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        return wrap_handler(
            handler,
            unary=lambda inner: _wrap_unary(inner, method),
            stream=lambda inner: _wrap_stream(inner, method),
        )


def _wrap_unary(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc, method)
            await context.abort(code, message)

    return call


def _wrap_stream(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in inner(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc, method)
            await context.abort(code, message)

    return call
