"""Teachers: the model whose answers become the dataset.

`EndpointTeacher` calls an OpenAI-compatible HTTP API with the official
`openai` client (completions, or chat completions), retrying only 429, 503 and
connection errors with bounded exponential backoff, and sending the W3C
`traceparent` of the current span on every request. `LocalTeacher` generates
with transformers from a model folder. Both answer `generate(prompts)` with one
dict per prompt: completion, finish_reason, completion_tokens, top_logprobs
(a list of {token: logprob} per generated token, or None), and `error` when the
prompt failed for good.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import openai

from slmops.core import tracing
from slmops.core.errors import Unavailable
from slmops.synthesis.spec import EndpointTeacherConfig, LocalTeacherConfig
from slmops.synthesis.spec_checks import SamplingConfig

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 503})


class Teacher(Protocol):
    def generate(self, prompts: list[str]) -> list[dict[str, Any]]: ...


def resolve_api_key(env_name: str) -> str:
    """The key held by the environment variable env_name; "none" when no name is given."""
    if not env_name:
        return "none"
    value = os.environ.get(env_name)
    if not value:
        raise Unavailable(
            f"environment variable {env_name} (api_key_env) is not set where the job runs; "
            "set it in the job's environment"
        )
    return value


def is_retryable(exc: BaseException) -> bool:
    """429, 503 and connection errors (timeouts included) are worth another try; nothing else."""
    if isinstance(exc, openai.APIConnectionError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code in RETRYABLE_STATUS


def backoff_delay(
    attempt: int, base_s: float, max_s: float, exc: BaseException | None = None
) -> float:
    """Exponential backoff with jitter for retry number attempt (0-based), bounded by max_s.

    A server's Retry-After (seconds) is honoured when it is longer, still bounded by max_s.
    """
    delay = base_s * (2**attempt) * (0.5 + random.random() / 2)
    response = getattr(exc, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after:
        try:
            delay = max(delay, float(retry_after))
        except ValueError:
            pass
    return min(delay, max_s)


def describe_error(exc: BaseException, base_url: str = "") -> str:
    """A one-line reason: the HTTP error the server gave, or the connection problem and where."""
    if isinstance(exc, openai.APIStatusError):
        return exc.message
    where = f" ({base_url})" if base_url else ""
    return f"{type(exc).__name__}: {exc}{where}"


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
    ):
        self.config = config
        self.sampling = sampling
        self.system_prompt = system_prompt
        self.traceparent = traceparent
        self.threads = max(1, threads)
        # Retries are ours (explicit codes, explicit bound), so the client's are off.
        self.client = openai.OpenAI(
            base_url=config.base_url,
            api_key=resolve_api_key(config.api_key_env),
            timeout=config.timeout_s,
            max_retries=0,
        )

    def generate(self, prompts: list[str]) -> list[dict[str, Any]]:
        if self.threads == 1 or len(prompts) <= 1:
            return [self.complete_safely(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            return list(pool.map(self.complete_safely, prompts))

    def complete_safely(self, prompt: str) -> dict[str, Any]:
        """complete(prompt), or a result carrying `error` once retries are spent."""
        try:
            return self.complete(prompt)
        except openai.OpenAIError as exc:
            return {
                "completion": "",
                "finish_reason": "error",
                "completion_tokens": 0,
                "top_logprobs": None,
                "error": describe_error(exc, self.config.base_url),
            }

    def complete(self, prompt: str) -> dict[str, Any]:
        """One prompt, retried on 429/503/connection errors up to max_retries times."""
        attempt = 0
        while True:
            with tracing.span_from(
                "synthesis.teacher_request",
                self.traceparent,
                {"teacher.model": self.config.model, "attempt": attempt},
            ) as span:
                try:
                    result = self._request(prompt)
                except openai.OpenAIError as exc:
                    reason = describe_error(exc)
                    span.set_attribute("error", reason)
                    if not is_retryable(exc) or attempt >= self.config.max_retries:
                        raise
                    delay = backoff_delay(
                        attempt, self.config.backoff_s, self.config.backoff_max_s, exc
                    )
                else:
                    span.set_attribute("completion_tokens", result["completion_tokens"])
                    return result
            log.info(
                "teacher: %s; retry %d of %d in %.2fs",
                reason,
                attempt + 1,
                self.config.max_retries,
                delay,
            )
            time.sleep(delay)
            attempt += 1

    def _request(self, prompt: str) -> dict[str, Any]:
        s = self.sampling
        common: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "extra_headers": tracing.http_headers(),
        }
        if s.stop:
            common["stop"] = s.stop
        if s.seed is not None:
            common["seed"] = s.seed
        if self.config.chat:
            messages = [{"role": "user", "content": prompt}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            if s.top_logprobs:
                common.update(logprobs=True, top_logprobs=s.top_logprobs)
            response = self.client.chat.completions.create(messages=messages, **common)
            choice = response.choices[0]
            text = choice.message.content or ""
            top = None
            if s.top_logprobs and choice.logprobs and choice.logprobs.content:
                top = [
                    {t.token: t.logprob for t in item.top_logprobs}
                    for item in choice.logprobs.content
                ]
        else:
            if s.top_logprobs:
                common["logprobs"] = s.top_logprobs
            response = self.client.completions.create(prompt=prompt, **common)
            choice = response.choices[0]
            text = choice.text or ""
            top = None
            if s.top_logprobs and choice.logprobs and choice.logprobs.top_logprobs:
                top = [dict(item or {}) for item in choice.logprobs.top_logprobs]
        usage = getattr(response, "usage", None)
        return {
            "completion": text,
            "finish_reason": choice.finish_reason or "",
            "completion_tokens": int(usage.completion_tokens) if usage else 0,
            "top_logprobs": top,
        }


class LocalTeacher:
    """A teacher generating with transformers from a model folder (or hub id) on this worker."""

    def __init__(self, config: LocalTeacherConfig, sampling: SamplingConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from slmops.core import artifacts

        path = (
            str(artifacts.local_path(config.model))
            if config.model.startswith("file://")
            else config.model
        )
        self.torch = torch
        self.sampling = sampling
        self.device = config.device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(config.device).eval()
        self.eos_id = self.tokenizer.eos_token_id
        pad_id = self.tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else self.eos_id

    def generate(self, prompts: list[str]) -> list[dict[str, Any]]:
        return [self.complete(p) for p in prompts]

    def complete(self, prompt: str) -> dict[str, Any]:
        torch, s = self.torch, self.sampling
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_id,
            "return_dict_in_generate": True,
            "output_scores": bool(s.top_logprobs),
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        new_ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        finish = "length"
        if self.eos_id is not None and self.eos_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.eos_id)]
            finish = "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        for stop in s.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        top = None
        if s.top_logprobs:
            top = []
            for scores in out.scores[: len(new_ids)]:
                logprobs = torch.log_softmax(scores[0].float(), dim=-1)
                values, ids = logprobs.topk(s.top_logprobs)
                top.append({self.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids)})
        return {
            "completion": text,
            "finish_reason": finish,
            "completion_tokens": len(new_ids),
            "top_logprobs": top,
        }


def make_teacher(
    teacher: EndpointTeacherConfig | LocalTeacherConfig,
    sampling: SamplingConfig,
    *,
    system_prompt: str = "",
    traceparent: str = "",
    threads: int = 1,
) -> Teacher:
    if isinstance(teacher, EndpointTeacherConfig):
        return EndpointTeacher(
            teacher, sampling, system_prompt=system_prompt, traceparent=traceparent, threads=threads
        )
    return LocalTeacher(teacher, sampling)
