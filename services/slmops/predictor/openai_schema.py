"""Request and response shapes of the OpenAI-compatible API (completions and chat).

Requests are validated with pydantic; unknown fields are ignored, as OpenAI
clients send many. An omitted `temperature` means greedy decoding (OpenAI's
default is 1.0): answers are reproducible unless a caller asks for sampling.
Lists are bounded: at most `MAX_PROMPTS` prompts (served.py), `MAX_STOPS` stop
strings of at most `MAX_STOP_CHARS` characters each, `MAX_N` choices.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.predictor.engines import Generation
from slmops.predictor.served import MAX_PROMPTS

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOPS = 16  # OpenAI allows 4
MAX_STOP_CHARS = 256


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # As vLLM: logprobs name tokens "token_id:N" (exact ids even where a token's text is not).
    return_tokens_as_token_ids: bool = False

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"holds {len(stops)} strings; at most {MAX_STOPS} are allowed")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return value

    def options(self) -> dict[str, Any]:
        """What `Served.job` takes from this request."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stops,
            "seed": self.seed,
            "n": self.n,
            "logprobs": self.top_count(),
        }

    def top_count(self) -> int | None:
        """How many alternatives per token to return (None: no logprobs)."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _bounded_prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) > MAX_PROMPTS:
            raise ValueError(f"holds {len(value)} prompts; at most {MAX_PROMPTS} are allowed in one request")
        return value

    def top_count(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatRequest(SamplingRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def options(self) -> dict[str, Any]:
        options = super().options()
        if self.max_tokens is None and self.max_completion_tokens:
            options["max_tokens"] = self.max_completion_tokens
        return options

    def top_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
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


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat's logprobs object from entries in its shape (see scheduler.logprob_entry)."""
    return {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The completions API's logprobs object (tokens, token_logprobs, top_logprobs, text_offset)."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def chunk(
    head: dict[str, Any],
    chat: bool,
    index: int,
    delta: Any,
    finish: str | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A streamed chunk of choice `index`; head holds id, created and model."""
    if chat:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish}
    return {**head, "object": "text_completion", "choices": [choice]}


def choice(chat: bool, index: int, g: Generation, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    """One choice of a whole (non-streamed) answer."""
    if chat:
        message = {"role": "assistant", "content": g.text}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": g.finish_reason}
    return {"index": index, "text": g.text, "logprobs": logprobs, "finish_reason": g.finish_reason}


def answer(
    head: dict[str, Any], chat: bool, choices: list[dict[str, Any]], counts: dict[str, int]
) -> dict[str, Any]:
    """A whole (non-streamed) answer with usage."""
    obj = "chat.completion" if chat else "text_completion"
    return {**head, "object": obj, "choices": choices, "usage": counts}
