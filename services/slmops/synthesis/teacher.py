"""Teachers: the model whose answers become the dataset.

`EndpointTeacher` calls an OpenAI-compatible HTTP API with the official
`openai` client (completions, or chat completions), retrying only 429, 503 and
connection errors with bounded exponential backoff, and sending the W3C
`traceparent` of the current span on every request. `LocalTeacher` generates
with transformers from a model folder. Both answer `generate(prompts)` with one
dict per prompt: completion, finish_reason, completion_tokens, top_logprobs
(the form `slmops.synthesis.logprobs` describes, or None), vocab_size when
top_logprobs carries token ids, unmapped_tokens when an endpoint's tokens were
mapped to ids (how many had none), and `error` when the prompt failed for good.

The local teacher's log-probabilities come from the model's raw logits (before
temperature and top-p), one position per completion token, plus the EOS token
as the last position when generation stopped on it: n == completion_tokens
(+1 on EOS). A stop string cuts the completion and its tokens at the first
token whose text reaches the cut.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import openai

from slmops.core import tracing
from slmops.core.endpoints import describe_error, resolve_api_key
from slmops.core.spec_checks import SamplingConfig
from slmops.synthesis import logprobs
from slmops.synthesis.spec import EndpointTeacherConfig, LocalTeacherConfig
from slmops.synthesis.token_table import load_token_table

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 503})


class Teacher(Protocol):
    def generate(self, prompts: list[str]) -> list[dict[str, Any]]: ...


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
        # Top-k tokens are mapped to ids only with the teacher's tokenizer.
        self.table = None
        if config.tokenizer and sampling.top_logprobs:
            self.table = load_token_table(config.tokenizer)

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
        ask = self._ask_chat if self.config.chat else self._ask_completion
        response, text, positions = ask(prompt, common)
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        result: dict[str, Any] = {
            "completion": text,
            "finish_reason": choice.finish_reason or "",
            "completion_tokens": int(usage.completion_tokens) if usage else 0,
            "top_logprobs": None,
        }
        if positions is not None:
            top, unmapped = logprobs.from_positions(positions, self.table)
            result["top_logprobs"] = top
            if self.table is not None:
                result["unmapped_tokens"] = unmapped
                if top["token_ids"] is not None:
                    result["vocab_size"] = self.table.vocab_size
        return result

    def _ask_chat(self, prompt: str, common: dict[str, Any]) -> tuple[Any, str, list | None]:
        """(response, text, log-probability positions or None) from /chat/completions."""
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        k = self.sampling.top_logprobs
        if k:
            common = {**common, "logprobs": True, "top_logprobs": k}
        response = self.client.chat.completions.create(messages=messages, **common)
        choice = response.choices[0]
        positions = None
        if k and choice.logprobs and choice.logprobs.content:
            positions = logprobs.chat_positions(choice.logprobs.content)
        return response, choice.message.content or "", positions

    def _ask_completion(self, prompt: str, common: dict[str, Any]) -> tuple[Any, str, list | None]:
        """(response, text, log-probability positions or None) from /completions."""
        k = self.sampling.top_logprobs
        if k:
            common = {**common, "logprobs": k}
        response = self.client.completions.create(prompt=prompt, **common)
        choice, positions = response.choices[0], None
        lp = choice.logprobs
        if k and lp and lp.tokens and lp.top_logprobs:
            positions = logprobs.completion_positions(lp.tokens, lp.top_logprobs)
        return response, choice.text or "", positions


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
        model_vocab = self.model.config.get_text_config().vocab_size or 0
        self.vocab_size = max(len(self.tokenizer), model_vocab)

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
            # Raw logits, not `scores`: scores come after the temperature and top-p processors.
            "output_logits": bool(s.top_logprobs),
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        generated = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        new_ids, text, finish, on_eos = self._cut(generated)
        result: dict[str, Any] = {
            "completion": text,
            "finish_reason": finish,
            "completion_tokens": len(new_ids),
            "top_logprobs": None,
        }
        if s.top_logprobs:
            positions = new_ids + ([self.eos_id] if on_eos else [])
            logits = [step[0] for step in out.logits]
            result["top_logprobs"] = logprobs.from_logits(
                positions, logits, s.top_logprobs, self._decode_each
            )
            result["vocab_size"] = self.vocab_size
        return result

    def _cut(self, generated: list[int]) -> tuple[list[int], str, str, bool]:
        """(completion ids, completion, finish_reason, stopped on EOS) for the generated ids."""
        ids, finish, on_eos = generated, "length", False
        if self.eos_id is not None and self.eos_id in ids:
            ids, finish, on_eos = ids[: ids.index(self.eos_id)], "stop", True
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.index(stop) for stop in self.sampling.stop if stop in text), default=None)
        if cut is not None:
            text, finish, on_eos = text[:cut], "stop", False
            ids = self._tokens_reaching(ids, text)
        return ids, text, finish, on_eos

    def _tokens_reaching(self, ids: list[int], text: str) -> list[int]:
        """The shortest prefix of ids whose text starts with text (binary search)."""
        low, high = 0, len(ids)
        while low < high:
            middle = (low + high) // 2
            if self.tokenizer.decode(ids[:middle], skip_special_tokens=True).startswith(text):
                high = middle
            else:
                low = middle + 1
        return ids[:low]

    def _decode_each(self, ids: list[int]) -> list[str]:
        """The text of each token id on its own."""
        return self.tokenizer.batch_decode([[i] for i in ids])


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
