"""Request and response shapes of the OpenAI-compatible API (completions and chat).

Requests are validated with pydantic; unknown fields are ignored, as OpenAI
clients send many. An omitted `temperature` means greedy decoding (OpenAI's
default is 1.0): answers are reproducible unless a caller asks for sampling.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from slmops.predictor.engines import Generation

DEFAULT_MAX_TOKENS = 64


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "max_tokens": self.max_tokens or DEFAULT_MAX_TOKENS,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stops,
            "seed": self.seed,
        }

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]


class ChatRequest(SamplingRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = super().engine_kwargs()
        if self.max_tokens is None and self.max_completion_tokens:
            kwargs["max_tokens"] = self.max_completion_tokens
        return kwargs


def error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """An OpenAI-style error response."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def field_name(loc: tuple) -> str:
    """A pydantic error location as a field path: ("messages", 0, "role") -> messages[0].role."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def usage(g: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"


def chunk(head: dict[str, Any], chat: bool, delta: Any, finish: str | None) -> dict[str, Any]:
    """A streamed chunk; head holds id, created and model."""
    if chat:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
    return {**head, "object": "text_completion", "choices": [choice]}


def answer(head: dict[str, Any], chat: bool, g: Generation) -> dict[str, Any]:
    """A whole (non-streamed) answer with usage."""
    if chat:
        message = {"role": "assistant", "content": g.text}
        choice = {"index": 0, "message": message, "finish_reason": g.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
        obj = "text_completion"
    return {**head, "object": obj, "choices": [choice], "usage": usage(g)}
