"""OpenAI-compatible routes, added to KServe's FastAPI app (KServe's own OpenAI layer needs vLLM).

`/openai/v1/completions`, `/openai/v1/chat/completions` (both with `stream`),
`/openai/v1/models`, and the same three under `/v1/`. The `model` field picks
one of the served models (404 otherwise); a bad field gives 400 with an
OpenAI-style error body naming it. Generation runs in a worker thread per
request (the engine serialises them); pieces reach the event loop through a
queue, so a slow client never blocks the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from slmops.core import tracing
from slmops.core.errors import InvalidSpec
from slmops.predictor import metrics
from slmops.predictor.engines import Engine, Generation
from slmops.predictor.openai_schema import (
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    answer,
    chunk,
    error,
    field_name,
    sse,
    usage,
)

log = logging.getLogger(__name__)
PREFIXES = ("/openai/v1", "/v1")
UNKNOWN_MODEL = "(unknown)"  # metrics label of requests naming no served model


class _Call:
    """One request's identity, span and timing; finish() records metrics and ends the span."""

    def __init__(
        self, req: SamplingRequest, endpoint: str, started: float, traceparent: str | None
    ):
        self.req, self.endpoint, self.started = req, endpoint, started
        self.chat = endpoint == "chat"
        answer_id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.head = {"id": answer_id, "created": int(time.time()), "model": req.model}
        parent = tracing.context_from_traceparent(traceparent)
        self.span = tracing.tracer().start_span(
            f"predictor.{endpoint}", context=parent, attributes={"model": req.model}
        )

    def finish(self, status: int, generation: Generation | None = None) -> None:
        prompt_tokens = generation.prompt_tokens if generation else 0
        completion_tokens = generation.completion_tokens if generation else 0
        self.span.set_attribute("http.status_code", status)
        self.span.set_attribute("prompt_tokens", prompt_tokens)
        self.span.set_attribute("completion_tokens", completion_tokens)
        if status >= 400:
            self.span.set_status(StatusCode.ERROR)
        self.span.end()
        elapsed = time.perf_counter() - self.started
        metrics.record(
            self.req.model, self.endpoint, status, elapsed, prompt_tokens, completion_tokens
        )


class _Stream:
    """Runs engine.stream in a worker thread and hands its pieces to the event loop."""

    def __init__(self, engine: Engine, prompt: str, kwargs: dict[str, Any]):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.generation: Generation | None = None
        self._pending: tuple[str, Any] | None = None
        threading.Thread(target=self._work, args=(engine, prompt, kwargs), daemon=True).start()

    def _put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def _work(self, engine: Engine, prompt: str, kwargs: dict[str, Any]) -> None:
        try:
            pieces = engine.stream(prompt, **kwargs)
            try:
                while not self.cancelled.is_set():
                    self._put("piece", next(pieces))
            except StopIteration as done:
                self._put("done", done.value)
                return
            finally:
                pieces.close()
            self._put("done", None)
        except Exception as exc:  # noqa: BLE001 - handed to the event loop, which answers
            self._put("error", exc)

    async def start(self) -> None:
        """Wait for the first piece; raise what the engine raised before it (e.g. InvalidSpec)."""
        self._pending = await self.queue.get()
        if self._pending[0] == "error":
            raise self._pending[1]

    async def pieces(self) -> AsyncIterator[str]:
        """The text pieces; sets self.generation at the end, raises the engine's error."""
        kind, value = self._pending or await self.queue.get()
        while kind == "piece":
            yield value
            kind, value = await self.queue.get()
        if kind == "error":
            raise value
        self.generation = value


class _Handler:
    """The endpoints, bound to the served models."""

    def __init__(self, models: Mapping[str, Engine]):
        self.models = dict(models)
        self.created = int(time.time())

    async def completions(self, request: Request) -> Any:
        return await self._serve(request, "completions", CompletionRequest, self._completion_prompt)

    async def chat(self, request: Request) -> Any:
        return await self._serve(request, "chat", ChatRequest, self._chat_prompt)

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(name) for name in self.models]}

    async def get_model(self, model: str) -> Any:
        if model not in self.models:
            return self._unknown(model)
        return self._card(model)

    def _card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "slmops"}

    def _unknown(self, model: str) -> JSONResponse:
        served = ", ".join(repr(m) for m in self.models)
        msg = f"The model {model!r} does not exist; this server serves {served}."
        return error(404, msg, "model", "model_not_found")

    @staticmethod
    def _completion_prompt(req: CompletionRequest, engine: Engine) -> str:
        if isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                raise InvalidSpec(
                    "prompt", "give one prompt per request (a string or a list of one)"
                )
            return req.prompt[0]
        return req.prompt

    @staticmethod
    def _chat_prompt(req: ChatRequest, engine: Engine) -> str:
        return engine.apply_chat_template(req.messages)

    async def _serve(
        self, request: Request, endpoint: str, schema: type[SamplingRequest], to_prompt: Callable
    ) -> Any:
        started = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return error(400, "The request body must be a JSON object.")
        try:
            req = schema.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = field_name(tuple(first["loc"]))
            return error(400, f"{param}: {first['msg']}", param)
        engine = self.models.get(req.model)
        if engine is None:
            # Not the requested name as a label: clients must not choose label values.
            metrics.record(UNKNOWN_MODEL, endpoint, 404, time.perf_counter() - started)
            return self._unknown(req.model)
        call = _Call(req, endpoint, started, request.headers.get("traceparent"))
        stream = None
        try:
            stream = _Stream(engine, to_prompt(req, engine), req.engine_kwargs())
            await stream.start()
            if req.stream:
                response = StreamingResponse(
                    self._events(stream, call), media_type="text/event-stream"
                )
                stream = None  # from here on _events owns it
                return response
            async for _ in stream.pieces():
                pass
        except InvalidSpec as exc:
            call.finish(400)
            return error(400, str(exc), exc.field)
        except Exception:
            log.exception("generation failed")
            call.finish(500)
            return error(500, "The model failed to generate.")
        finally:
            if stream is not None:
                stream.cancelled.set()  # stops the worker if this request was abandoned
        call.finish(200, stream.generation)
        return answer(call.head, call.chat, stream.generation)

    async def _events(self, stream: _Stream, call: _Call) -> AsyncIterator[str]:
        """Server-sent events: one chunk per piece, a closing chunk, optional usage, [DONE]."""
        status = 500
        try:
            if call.chat:
                yield sse(chunk(call.head, True, {"role": "assistant", "content": ""}, None))
            first = True
            async for piece in stream.pieces():
                if first:
                    elapsed = time.perf_counter() - call.started
                    metrics.FIRST_TOKEN.labels(call.req.model, call.endpoint).observe(elapsed)
                    first = False
                yield sse(
                    chunk(call.head, call.chat, {"content": piece} if call.chat else piece, None)
                )
            generation = stream.generation
            end = {} if call.chat else ""
            yield sse(chunk(call.head, call.chat, end, generation.finish_reason))
            if call.req.include_usage:
                last = chunk(call.head, call.chat, None, None)
                yield sse({**last, "choices": [], "usage": usage(generation)})
            yield "data: [DONE]\n\n"
            status = 200
        except Exception:
            log.exception("generation failed while streaming")
            yield sse(
                {"error": {"message": "The model failed to generate.", "type": "server_error"}}
            )
        finally:
            stream.cancelled.set()
            call.finish(status, stream.generation)


def make_router(models: Mapping[str, Engine]) -> APIRouter:
    """The OpenAI-compatible routes for the given {served name: engine}."""
    handler = _Handler(models)
    router = APIRouter()
    for prefix in PREFIXES:
        router.add_api_route(f"{prefix}/completions", handler.completions, methods=["POST"])
        router.add_api_route(f"{prefix}/chat/completions", handler.chat, methods=["POST"])
        router.add_api_route(f"{prefix}/models", handler.list_models, methods=["GET"])
    # Only under /openai/v1: KServe's v1 protocol owns GET /v1/models/{name} (model readiness).
    router.add_api_route(f"{PREFIXES[0]}/models/{{model}}", handler.get_model, methods=["GET"])
    return router
