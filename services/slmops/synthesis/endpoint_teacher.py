"""The endpoint teacher: an OpenAI-compatible API asked concurrently, within rate limits, with retries.

Requests run on asyncio with the official `openai` async client: at most
`concurrency` in flight, each first admitted by the rate limits (`aiolimiter`:
requests per minute, and tokens per minute counted as the prompt's estimated
tokens plus max_tokens). A worker given a `share` of the job's limits (1/N of
a pool of N workers) keeps to its share, so the pool keeps to the whole.

Every connection passes the egress allow-list (core/egress); a refused host is
not retried. The bearer token is core/endpoints' `resolve_api_key`: the key a
request names, for a host allowed for it, or the platform's predictor key when
the teacher is one of the platform's deployments.

Retries (`tenacity`): 429, 500, 502, 503, 504, timeouts and connection errors
are tried again, up to `max_attempts` attempts in all, after an exponential
backoff with jitter, or the server's `Retry-After` when that is longer (up to
`retry_after_max_s`). A request waiting to be retried holds no concurrency
slot. Anything else fails at once. A prompt that fails for good comes back as
a result with `error`, its HTTP `status` (0 without one) and `attempts`; every
result says how many attempts it took, and the prompt and completion tokens
the teacher reported (what its bill counts).

With `samples` > 1 each request asks for that many answers (`n`): the result
describes the first and lists all of them in `samples` (each with its
completion, finish_reason, completion_tokens and top_logprobs); the result's
completion_tokens is the response's total.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from typing import Any

import httpx
import openai
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from slmops.core import egress, tracing
from slmops.core.datasets import chat_messages
from slmops.core.endpoints import cut, describe_error, openai_client, resolve_api_key
from slmops.core.errors import Unavailable
from slmops.core.spec_checks import SamplingConfig
from slmops.synthesis import logprobs
from slmops.synthesis.config import EndpointTeacherConfig
from slmops.synthesis.token_table import load_token_table

log = logging.getLogger(__name__)

Answer = tuple[str, str | None, list | None]  # an answer's text, finish_reason and top-k positions
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CHARS_PER_TOKEN = 4  # a prompt's tokens, estimated before the teacher counts them


def is_retryable(exc: BaseException) -> bool:
    """429, 500, 502, 503, 504, timeouts and connection errors are worth another try; nothing else
    (a host the egress allow-list refuses least of all)."""
    if egress.refusal(exc) is not None:
        return False
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code in RETRYABLE_STATUS


def retry_after(exc: BaseException | None) -> float | None:
    """The seconds a server asked to wait (Retry-After in seconds or as a date, or retry-after-ms)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    if value := headers.get("retry-after-ms"):
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def backoff_delay(attempt: int, base_s: float, max_s: float, exc: BaseException | None = None,
                  retry_after_max_s: float | None = None) -> float:  # fmt: skip
    """The wait before retry number `attempt` (0-based): exponential with jitter, bounded by max_s,
    or the server's Retry-After when that is longer, bounded by retry_after_max_s (max_s by default)."""
    delay = min(base_s * (2**attempt) * (0.5 + random.random() / 2), max_s)
    asked = retry_after(exc)
    if asked is not None:
        delay = max(delay, min(asked, max_s if retry_after_max_s is None else retry_after_max_s))
    return delay


def probe(config: EndpointTeacherConfig) -> None:
    """One request before any work: a teacher that cannot be reached, or refuses the key, fails the job now
    (and so does a host the egress allow-list refuses: EgressRefused)."""
    headers = {"Authorization": f"Bearer {resolve_api_key(config.api_key_env, config.base_url)}"}
    try:
        with egress.http_client(timeout=min(config.timeout_s, 15.0)) as client:
            response = client.get(f"{config.base_url}/models", headers=headers)
    except httpx.HTTPError as exc:
        raise Unavailable(f"the teacher at {config.base_url} cannot be reached ({type(exc).__name__}: "
                          f"{cut(str(exc))}); nothing was asked") from None  # fmt: skip
    if response.status_code in (401, 403):
        key = f"the key in {config.api_key_env}" if config.api_key_env else "no API key"
        raise Unavailable(f"the teacher at {config.base_url} refused {key} (HTTP {response.status_code})")


def limiter(per_minute: float) -> AsyncLimiter:
    """A limiter of `per_minute` whose bursts last at most a second (at least one unit at a time)."""
    per_second = per_minute / 60
    burst = max(1.0, per_second)
    return AsyncLimiter(burst, burst / per_second)


def failed(exc: BaseException, base_url: str, attempts: int) -> dict[str, Any]:
    """The result of a prompt the teacher did not answer."""
    return {
        "completion": "", "finish_reason": "error", "completion_tokens": 0, "prompt_tokens": 0,
        "top_logprobs": None, "error": describe_error(exc, base_url), "attempts": attempts,
        "status": int(getattr(exc, "status_code", 0) or 0),
    }  # fmt: skip


class EndpointTeacher:
    """A teacher behind an OpenAI-compatible API."""

    def __init__(
        self,
        config: EndpointTeacherConfig,
        sampling: SamplingConfig,
        *,
        system_prompt: str = "",
        traceparent: str = "",
        threads: int = 1,
        share: float = 1.0,
        samples: int = 1,
    ):
        self.config, self.sampling = config, sampling
        self.samples = max(1, samples)
        self.system_prompt, self.traceparent = system_prompt, traceparent
        self.concurrency = max(1, threads)
        self.share = min(max(share, 1e-6), 1.0)
        self.api_key = resolve_api_key(config.api_key_env, config.base_url)
        # Top-k tokens are mapped to ids only with the teacher's tokenizer.
        self.table = (
            load_token_table(config.tokenizer) if config.tokenizer and sampling.top_logprobs else None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._limits: tuple[AsyncLimiter | None, AsyncLimiter | None] | None = None

    def generate(self, prompts: list[str]) -> list[dict[str, Any]]:
        """One result per prompt, in order; never raises for a prompt the teacher did not answer.

        Calls share one event loop and one client, so a worker answering shard
        after shard keeps its connections to the teacher open between them.
        """
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self._generate(prompts))

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            if self._client is not None:
                self._loop.run_until_complete(self._client.close())
            self._loop.close()
        self._client = None

    async def _generate(self, prompts: list[str]) -> list[dict[str, Any]]:
        cfg = self.config
        if self._client is None:
            # Retries are tenacity's (explicit codes, explicit bound), so the client's are off.
            self._client = openai_client(cfg.base_url, self.api_key, timeout=cfg.timeout_s, asynchronous=True)
        slots = asyncio.Semaphore(self.concurrency)
        if self._limits is None:  # the rate limits hold across calls
            self._limits = (limiter(cfg.requests_per_minute * self.share) if cfg.requests_per_minute else None,
                            limiter(cfg.tokens_per_minute * self.share) if cfg.tokens_per_minute else None)  # fmt: skip
        rpm, tpm = self._limits
        return list(await asyncio.gather(*(self._answer(self._client, p, slots, rpm, tpm) for p in prompts)))

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        cfg = self.config
        delay = backoff_delay(
            state.attempt_number - 1, cfg.backoff_s, cfg.backoff_max_s, exc, cfg.retry_after_max_s
        )
        log.info("teacher: %s; attempt %d of %d in %.2fs", describe_error(exc) if exc else "?",
                 state.attempt_number + 1, cfg.max_attempts, delay)  # fmt: skip
        return delay

    async def _answer(self, client: openai.AsyncOpenAI, prompt: str, slots: asyncio.Semaphore,
                      rpm: AsyncLimiter | None, tpm: AsyncLimiter | None) -> dict[str, Any]:  # fmt: skip
        attempts = 0
        retrying = AsyncRetrying(stop=stop_after_attempt(self.config.max_attempts), wait=self._wait,
                                 retry=retry_if_exception(is_retryable), reraise=True)  # fmt: skip
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    async with slots:
                        if rpm is not None:
                            await rpm.acquire()
                        if tpm is not None:
                            estimate = (
                                len(prompt) // CHARS_PER_TOKEN + self.sampling.max_tokens * self.samples
                            )
                            await tpm.acquire(min(estimate, tpm.max_rate))
                        result = await self._traced(client, prompt, attempts)
            result["attempts"] = attempts
            return result
        except (openai.OpenAIError, Unavailable) as exc:  # Unavailable: an answer without choices
            return failed(exc, self.config.base_url, attempts)

    async def _traced(self, client: openai.AsyncOpenAI, prompt: str, attempt: int) -> dict[str, Any]:
        with tracing.span_from("synthesis.teacher_request", self.traceparent,
                               {"teacher.model": self.config.model, "attempt": attempt}) as span:  # fmt: skip
            try:
                result = await self._request(client, prompt)
            except openai.OpenAIError as exc:
                span.set_attribute("error", describe_error(exc))
                raise
            span.set_attribute("completion_tokens", result["completion_tokens"])
            return result

    async def _request(self, client: openai.AsyncOpenAI, prompt: str) -> dict[str, Any]:
        s = self.sampling
        common: dict[str, Any] = {"model": self.config.model, "max_tokens": s.max_tokens,
                                  "temperature": s.temperature, "top_p": s.top_p,
                                  "extra_headers": tracing.http_headers()}  # fmt: skip
        if s.stop:
            common["stop"] = s.stop
        if s.seed is not None:
            common["seed"] = s.seed
        if self.samples > 1:
            common["n"] = self.samples
        ask = self._ask_chat if self.config.chat else self._ask_completion
        response, answers = await ask(client, prompt, common)
        usage = getattr(response, "usage", None)
        completion_tokens = int(usage.completion_tokens or 0) if usage else 0
        samples = [self._sample(text, finish, positions) for text, finish, positions in answers]
        if not samples:
            raise Unavailable(f"the teacher at {self.config.base_url} answered with no choices")
        share_tokens(samples, completion_tokens)
        result: dict[str, Any] = {**samples[0], "completion_tokens": completion_tokens,
                                  "prompt_tokens": int(usage.prompt_tokens or 0) if usage else 0}  # fmt: skip
        if self.samples > 1:
            result["samples"] = samples
        return result

    def _sample(self, text: str, finish: str | None, positions: list | None) -> dict[str, Any]:
        """One answer of a response: its text, why it ended, and its top-k when asked for."""
        sample: dict[str, Any] = {"completion": text, "finish_reason": finish or "", "top_logprobs": None}
        if positions is not None:
            top, unmapped = logprobs.from_positions(positions, self.table)
            sample["top_logprobs"] = top
            sample["completion_tokens"] = len(positions)
            if self.table is not None:
                sample["unmapped_tokens"] = unmapped
                if top["token_ids"] is not None:
                    sample["vocab_size"] = self.table.vocab_size
        return sample

    async def _ask_chat(self, client: openai.AsyncOpenAI, prompt: str,
                        common: dict[str, Any]) -> tuple[Any, list[Answer]]:  # fmt: skip
        """The response from /chat/completions and its answers."""
        messages = chat_messages(prompt, self.system_prompt)
        k = self.sampling.top_logprobs
        if k:
            common = {**common, "logprobs": True, "top_logprobs": k}
        response = await client.chat.completions.create(messages=messages, **common)
        answers = []
        for choice in sorted(response.choices or [], key=lambda c: c.index):
            positions = None
            if k and choice.logprobs and choice.logprobs.content:
                positions = logprobs.chat_positions(choice.logprobs.content)
            answers.append((choice.message.content or "", choice.finish_reason, positions))
        return response, answers

    async def _ask_completion(self, client: openai.AsyncOpenAI, prompt: str,
                              common: dict[str, Any]) -> tuple[Any, list[Answer]]:  # fmt: skip
        """The response from /completions and its answers."""
        k = self.sampling.top_logprobs
        if k:
            common = {**common, "logprobs": k}
        response = await client.completions.create(prompt=prompt, **common)
        answers = []
        for choice in sorted(response.choices or [], key=lambda c: c.index):
            positions, lp = None, choice.logprobs
            if k and lp and lp.tokens and lp.top_logprobs:
                positions = logprobs.completion_positions(lp.tokens, lp.top_logprobs)
            answers.append((choice.text or "", choice.finish_reason, positions))
        return response, answers


def share_tokens(samples: list[dict[str, Any]], total: int) -> None:
    """Give each answer its completion_tokens: counted from its log-probabilities when it has them,
    else the response's total shared among the answers by their length (one answer: the total)."""
    if len(samples) == 1 and "completion_tokens" not in samples[0]:
        samples[0]["completion_tokens"] = total
        return
    unknown = [s for s in samples if "completion_tokens" not in s]
    left = max(0, total - sum(int(s.get("completion_tokens", 0)) for s in samples))
    chars = sum(len(s["completion"]) for s in unknown) or len(unknown)
    for sample in unknown:
        sample["completion_tokens"] = round(left * (len(sample["completion"]) or 1) / chars) if chars else 0
