"""OpenAI-compatible routes, added to KServe's FastAPI app (KServe's own OpenAI layer needs vLLM).

`/openai/v1/completions`, `/openai/v1/chat/completions` (both with `stream`),
`/openai/v1/models`, and the same three under `/v1/`. The `model` field picks
the base model or one of its LoRA adapters (404 otherwise); a bad field, or a
list past its limit (openai_schema.py), gives 400 with an OpenAI-style error
body naming it, and so does a body that is not JSON or is nested too deeply; a
full queue gives 429 with `Retry-After`, before any prompt is tokenized; a
request past its timeout gives 504. Prompts are tokenized in the tokenizing thread,
never on the event loop. Requests become scheduler jobs
(`predictor/scheduler.py`), so concurrent requests are decoded together, and a
request whose client goes away stops decoding at once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from slmops.core import tracing
from slmops.core.errors import InvalidSpec
from slmops.predictor import metrics
from slmops.predictor.engines import Generation
from slmops.predictor.openai_schema import (
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    answer,
    chat_logprobs,
    choice,
    chunk,
    completion_logprobs,
    error,
    field_name,
    sse,
    usage,
)
from slmops.predictor.scheduler import Job, Overloaded, TimedOut, logprob_entry
from slmops.predictor.served import Inbox, Served, UnknownModel

log = logging.getLogger(__name__)
PREFIXES = ("/openai/v1", "/v1")
UNKNOWN_MODEL = "(unknown)"  # metrics label of requests naming no served model


class _Call:
    """One request's identity, span, jobs and timing; finish() records metrics and ends the span."""

    def __init__(self, req: SamplingRequest, endpoint: str, started: float, traceparent: str | None):
        self.req, self.endpoint, self.started = req, endpoint, started
        self.chat = endpoint == "chat"
        answer_id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.head = {"id": answer_id, "created": int(time.time()), "model": req.model}
        parent = tracing.context_from_traceparent(traceparent)
        self.span = tracing.tracer().start_span(
            f"predictor.{endpoint}", context=parent, attributes={"model": req.model}
        )
        self.jobs: list[Job] = []
        self.prompts: list[str] = []
        self.first_token: float | None = None
        self.completion_tokens = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(job.prompt_ids) for job in self.jobs)

    def index(self, job_index: int, row: int) -> int:
        return job_index * self.req.n + row

    def saw_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
            metrics.FIRST_TOKEN.labels(self.req.model, self.endpoint).observe(self.first_token - self.started)

    def finish(self, status: int) -> None:
        self.span.set_attribute("http.status_code", status)
        self.span.set_attribute("prompt_tokens", self.prompt_tokens)
        self.span.set_attribute("completion_tokens", self.completion_tokens)
        if status >= 400:
            self.span.set_status(StatusCode.ERROR)
        self.span.end()
        now = time.perf_counter()
        if status == 200 and self.first_token is not None and self.completion_tokens > len(self.jobs):
            per_token = (now - self.first_token) / (self.completion_tokens - 1)
            metrics.TIME_PER_TOKEN.labels(self.req.model, self.endpoint).observe(per_token)
        metrics.record(
            self.req.model, self.endpoint, status, now - self.started,
            self.prompt_tokens if status == 200 else 0, self.completion_tokens,
        )  # fmt: skip


def _failure(exc: BaseException) -> tuple[int, str, str | None]:
    """(status, message, code) for an error that ended a request."""
    if isinstance(exc, TimedOut):
        return 504, f"The request timed out: {exc}.", "timeout"
    return 500, "The model failed to generate.", None


class _Handler:
    """The endpoints, bound to what the predictor serves."""

    def __init__(self, served: Served):
        self.served = served
        self.created = int(time.time())

    async def completions(self, request: Request) -> Any:
        return await self._serve(request, "completions", CompletionRequest)

    async def chat(self, request: Request) -> Any:
        return await self._serve(request, "chat", ChatRequest)

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(name) for name in self.served.names]}

    async def get_model(self, model: str) -> Any:
        if model not in self.served.names:
            return self._unknown(model)
        return self._card(model)

    def _card(self, name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "slmops"}
        if name != self.served.name:
            card["parent"] = self.served.name  # a LoRA adapter on the base model
        return card

    def _unknown(self, model: str) -> JSONResponse:
        served = ", ".join(repr(m) for m in self.served.names)
        msg = f"The model {model!r} does not exist; this server serves {served}."
        return error(404, msg, "model", "model_not_found")

    def _prompts(self, req: SamplingRequest) -> list[str]:
        if isinstance(req, ChatRequest):
            return [self.served.engine.apply_chat_template(req.messages)]
        assert isinstance(req, CompletionRequest)
        return req.prompts()

    def _jobs(self, call: _Call, inbox: Inbox, deadline: float) -> list[Job]:
        """The request's jobs, its prompts templated and tokenized (in the tokenizing thread: Served.admit)."""
        call.prompts = self._prompts(call.req)
        options = call.req.options()
        return [
            self.served.job(prompt, **options, sink=inbox.sink(i), deadline=deadline)
            for i, prompt in enumerate(call.prompts)
        ]

    async def _serve(self, request: Request, endpoint: str, schema: type[SamplingRequest]) -> Any:
        started = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "The request body is not valid JSON.")
        except RecursionError:
            return error(400, "The request body is nested too deeply.")
        if not isinstance(body, dict):
            return error(400, "The request body must be a JSON object.")
        try:
            req = schema.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = field_name(tuple(first["loc"]))
            message = first["msg"].removeprefix("Value error, ")
            return error(400, f"{param}: {message}", param)
        except RecursionError:
            return error(400, "The request body is nested too deeply.")
        try:
            self.served.adapter_of(req.model)
        except UnknownModel:
            # Not the requested name as a label: clients must not choose label values.
            metrics.record(UNKNOWN_MODEL, endpoint, 404, time.perf_counter() - started)
            return self._unknown(req.model)
        call = _Call(req, endpoint, started, request.headers.get("traceparent"))
        inbox = Inbox()
        deadline = time.monotonic() + self.served.limits.request_timeout_s
        count = len(req.prompts()) if isinstance(req, CompletionRequest) else 1
        try:
            self.served.check_request(count, req.n)
            call.jobs = await self.served.admit(count, lambda: self._jobs(call, inbox, deadline))
        except InvalidSpec as exc:
            call.finish(400)
            return error(400, str(exc), exc.field)
        except Overloaded as exc:
            call.finish(429)
            response = error(429, f"The server is busy: {exc}.", None, "rate_limit_exceeded")
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        if req.stream:
            return StreamingResponse(self._events(call, inbox), media_type="text/event-stream")
        return await self._whole(call, inbox, request)

    def _entries(self, call: _Call, event_entry: Any) -> list[dict[str, Any]]:
        if event_entry is None:
            return []
        return [logprob_entry(self.served.engine, event_entry, call.req.return_tokens_as_token_ids)]

    def _logprobs(
        self, call: _Call, job_index: int, entries: list[dict[str, Any]], offset: int
    ) -> dict[str, Any] | None:
        if call.req.top_count() is None:
            return None
        if call.chat:
            return chat_logprobs(entries)
        return completion_logprobs(entries, len(call.prompts[job_index]) + offset)

    async def _whole(self, call: _Call, inbox: Inbox, request: Request) -> Any:
        """Wait for every sequence and answer them together."""
        expected = sum(job.n for job in call.jobs)
        ends: dict[int, tuple[int, Generation]] = {}
        entries: dict[int, list[dict[str, Any]]] = {}
        status = 500
        try:
            async for job_index, event in inbox.events(expected, request.is_disconnected):
                kind, row = event[0], event[1]
                if kind == "error":
                    status, message, code = _failure(event[2])
                    if status == 500:
                        log.error("generation failed: %s", event[2])
                    return error(status, message, None, code)
                index = call.index(job_index, row)
                if kind == "piece":
                    call.saw_token()
                    entries.setdefault(index, []).extend(self._entries(call, event[3]))
                elif kind == "end":
                    ends[index] = (job_index, event[2])
            if len(ends) < expected:
                status = 499  # the client closed the connection: nothing to answer
                return error(499, "The client closed the request.")
            status = 200
        finally:
            for job in call.jobs:
                self.served.scheduler.cancel(job)
            call.completion_tokens = sum(g.completion_tokens for _, g in ends.values())
            call.finish(status)
        choices = [
            choice(call.chat, index, g, self._logprobs(call, job_index, entries.get(index, []), 0))
            for index, (job_index, g) in sorted(ends.items())
        ]
        return answer(call.head, call.chat, choices, usage(call.prompt_tokens, call.completion_tokens))

    async def _events(self, call: _Call, inbox: Inbox) -> AsyncIterator[str]:
        """Server-sent events: chunks per piece and per choice, a closing chunk each, usage, [DONE]."""
        status = 499  # until the stream ends or fails: the client closed it
        expected = sum(job.n for job in call.jobs)
        offsets: dict[int, int] = {}
        try:
            if call.chat:
                for index in range(expected):
                    yield sse(chunk(call.head, True, index, {"role": "assistant", "content": ""}, None))
            async for job_index, event in inbox.events(expected):
                kind, row = event[0], event[1]
                if kind == "error":
                    status, message, code = _failure(event[2])
                    if status == 500:
                        log.error("generation failed while streaming: %s", event[2])
                    kind_name = "server_error" if status >= 500 else "invalid_request_error"
                    yield sse({"error": {"message": message, "type": kind_name, "param": None, "code": code}})
                    return
                index = call.index(job_index, row)
                if kind == "piece":
                    call.saw_token()
                    piece, entries = event[2], self._entries(call, event[3])
                    logprobs = self._logprobs(call, job_index, entries, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + len(piece)
                    delta = {"content": piece} if call.chat else piece
                    yield sse(chunk(call.head, call.chat, index, delta, None, logprobs))
                elif kind == "end":
                    generation: Generation = event[2]
                    call.completion_tokens += generation.completion_tokens
                    end = {} if call.chat else ""
                    yield sse(chunk(call.head, call.chat, index, end, generation.finish_reason))
            if call.req.include_usage:
                last = {**chunk(call.head, call.chat, 0, None, None), "choices": []}
                yield sse({**last, "usage": usage(call.prompt_tokens, call.completion_tokens)})
            yield "data: [DONE]\n\n"
            status = 200
        except Exception:
            status = 500
            log.exception("streaming failed")
            yield sse({"error": {"message": "The model failed to generate.", "type": "server_error",
                                 "param": None, "code": None}})  # fmt: skip
        finally:
            for job in call.jobs:
                self.served.scheduler.cancel(job)  # the client may have gone: stop decoding
            call.finish(status)


def make_router(served: Served) -> APIRouter:
    """The OpenAI-compatible routes for the base model and adapters that `served` holds."""
    handler = _Handler(served)
    router = APIRouter()
    for prefix in PREFIXES:
        router.add_api_route(f"{prefix}/completions", handler.completions, methods=["POST"])
        router.add_api_route(f"{prefix}/chat/completions", handler.chat, methods=["POST"])
        router.add_api_route(f"{prefix}/models", handler.list_models, methods=["GET"])
    # Only under /openai/v1: KServe's v1 protocol owns GET /v1/models/{name} (model readiness).
    router.add_api_route(f"{PREFIXES[0]}/models/{{model}}", handler.get_model, methods=["GET"])
    return router
