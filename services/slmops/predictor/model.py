"""The KServe model: one engine on the Open Inference Protocol v2.

`POST /v2/models/{name}/infer` (and gRPC `ModelInfer`) takes a BYTES input
`text` (one prompt per element) and an optional INT32 input `max_tokens` (one
value, or one per prompt), and answers a BYTES output `text` of the same
shape. A request holds at most `served.MAX_PROMPTS` prompts (fewer when the
queue is shorter); a full queue refuses it (429) before any prompt is
tokenized, and prompts are tokenized in a worker thread. The prompts go to the
scheduler together, so they are decoded as one batch.

The base model is served under its name and each LoRA adapter under its own
(one GenerationModel per served name, like the OpenAI routes' `model`). A
request for the base model may also pick an adapter with the request parameter
`adapter` (`parameters: {"adapter": NAME}`; gRPC: a `string_param`); an
adapter it does not serve is 400 (gRPC INVALID_ARGUMENT) naming it. An answer
made with an adapter says which in its parameters (`adapter`).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ServerNotReady
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    to_http_parameters,
)

from slmops.core import tracing
from slmops.core.errors import InvalidSpec
from slmops.predictor import metrics
from slmops.predictor.scheduler import Job, Overloaded, TimedOut
from slmops.predictor.served import Inbox, Served, run_all


class Busy(ServerNotReady):
    """The scheduler's queue is full: REST answers 429 with Retry-After (server.py), gRPC UNAVAILABLE."""

    def __init__(self, retry_after: int):
        super().__init__(f"It is at capacity; retry after {retry_after} s.")
        self.retry_after = retry_after
        self.reason = str(self)  # what KServe's gRPC interceptor reports


class GenerationModel(Model):
    """Serves `served` under its base model's name, or under one adapter's (`adapter`); the engine is
    loaded before the server starts."""

    def __init__(self, served: Served, adapter: str | None = None):
        super().__init__(adapter or served.name)
        # Not `self.engine`: KServe reserves that flag for models with an async engine to start.
        self.served = served
        self.ready = False

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
            {"name": "max_tokens", "datatype": "INT32", "shape": [-1]},
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        started = time.perf_counter()
        traceparent = (headers or {}).get("traceparent")
        with tracing.span_from("predictor.infer", traceparent, {"model": self.name}) as span:
            try:
                prompts, budgets = _parse(payload)
                model = self._model_of(payload)
            except InvalidInput:
                metrics.record(self.name, "infer", 400, time.perf_counter() - started)
                raise
            inbox = Inbox()
            deadline = time.monotonic() + self.served.limits.request_timeout_s

            def build() -> list[Job]:
                return [
                    self.served.job(
                        prompt, model=model, max_tokens=budget, sink=inbox.sink(i), deadline=deadline
                    )  # fmt: skip
                    for i, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True))
                ]

            try:
                self.served.check_request(len(prompts), 1, "text")
                jobs = await self.served.admit(len(prompts), build)  # 429 before any tokenizing
                results = await run_all(self.served, jobs, inbox)
            except InvalidSpec as exc:
                metrics.record(self.name, "infer", 400, time.perf_counter() - started)
                raise InvalidInput(str(exc)) from exc
            except Overloaded as exc:
                metrics.record(self.name, "infer", 429, time.perf_counter() - started)
                raise Busy(exc.retry_after) from exc
            except TimedOut as exc:
                metrics.record(self.name, "infer", 504, time.perf_counter() - started)
                raise InvalidInput(f"the request timed out: {exc}") from exc
            texts = [rows[0].text for rows in results]
            prompt_tokens = sum(rows[0].prompt_tokens for rows in results)
            completion_tokens = sum(rows[0].completion_tokens for rows in results)
            span.set_attribute("prompt_tokens", prompt_tokens)
            span.set_attribute("completion_tokens", completion_tokens)
        metrics.record(
            self.name, "infer", 200, time.perf_counter() - started, prompt_tokens, completion_tokens
        )
        output = InferOutput("text", [len(texts)], "BYTES", data=texts)
        parameters = {"adapter": model} if model != self.served.name else None
        return InferResponse(payload.id or uuid.uuid4().hex, self.name, [output], parameters=parameters)

    def _model_of(self, payload: InferRequest) -> str:
        """The served name a request runs: this model's, or the adapter its `adapter` parameter picks."""
        picked = to_http_parameters(payload.parameters or {}).get("adapter")
        if picked in (None, "", self.name):
            return self.name
        if not isinstance(picked, str):
            raise InvalidInput("parameters.adapter must be a string: the name of a served adapter")
        if self.name != self.served.name:
            raise InvalidInput(f"parameters.adapter {picked!r}: an adapter is picked on the base model "
                               f"{self.served.name!r}, not on the adapter {self.name!r}")  # fmt: skip
        if picked not in self.served.engine.adapters:
            served = ", ".join(self.served.engine.adapters) or "none"
            raise InvalidInput(
                f"parameters.adapter: unknown adapter {picked!r} (this model serves: {served})"
            )
        return picked


def _parse(payload: InferRequest) -> tuple[list[str], list[int | None]]:
    """Prompts and per-prompt token budgets from an OIP request; InvalidInput when malformed."""
    text_input = payload.get_input_by_name("text")
    if text_input is None:
        raise InvalidInput("input 'text' (BYTES) is required")
    if text_input.datatype != "BYTES":
        raise InvalidInput(f"input 'text' must be BYTES, not {text_input.datatype}")
    values = np.asarray(_as_numpy(text_input, "text"), dtype=object).reshape(-1)
    if any(not isinstance(v, str | bytes) for v in values):
        raise InvalidInput("input 'text' must hold strings, one prompt per element")
    prompts = [_as_str(v) for v in values]
    if not prompts:
        raise InvalidInput("input 'text' is empty")
    budgets: list[int | None] = [None] * len(prompts)
    budget_input = payload.get_input_by_name("max_tokens")
    if budget_input is not None:
        if budget_input.datatype not in ("INT32", "INT64"):
            raise InvalidInput(f"input 'max_tokens' must be INT32, not {budget_input.datatype}")
        data = np.asarray(_as_numpy(budget_input, "max_tokens")).reshape(-1)
        try:
            values = [int(v) for v in data]
        except (TypeError, ValueError):
            raise InvalidInput("input 'max_tokens' must hold integers") from None
        if len(values) == 1:
            values = values * len(prompts)
        if len(values) != len(prompts) or any(v < 1 for v in values):
            raise InvalidInput("input 'max_tokens' must hold one positive value or one per prompt")
        budgets = values
    return prompts, budgets


def _as_numpy(tensor: InferInput, name: str) -> np.ndarray:
    """A tensor's data in its shape; InvalidInput when the two do not agree."""
    try:
        return tensor.as_numpy()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"input {name!r} does not match its shape {tensor.shape}: {str(exc)[:120]}"
        ) from None


def _as_str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
