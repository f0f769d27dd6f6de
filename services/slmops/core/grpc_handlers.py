"""Wrapping a gRPC method handler, whichever of the four kinds it is.

A server interceptor that changes how a method behaves (counts it, maps its
errors, refuses it) gets a `grpc.RpcMethodHandler` holding one of
`unary_unary`, `unary_stream`, `stream_unary` or `stream_stream`.
`wrap_handler` builds the handler of the same kind and codec around new
behaviour: `unary(inner)` where the method answers once, `stream(inner)` where
it answers with a stream. The first argument of a behaviour is the request, or
the request iterator of a client-streaming method; the wrapper passes it on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    *,
    unary: Callable[[Behaviour], Behaviour],
    stream: Callable[[Behaviour], Behaviour],
) -> grpc.RpcMethodHandler:
    """A handler of handler's kind and codec running unary(inner) or stream(inner) for its behaviour inner."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **codec)
    return handler
