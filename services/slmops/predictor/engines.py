"""Text generation engines the predictor serves: ONNX Runtime GenAI or transformers.

This module holds what both share (`ort_engine.py` and `hf_engine.py` build on
it); `loading.load_engine(model_dir)` picks one for a folder.

An engine decodes *cohorts*: several sequences started together with the same
sampling options and adapter, advanced one token per `step()`. The scheduler
(`predictor/scheduler.py`) keeps several cohorts going at once and interleaves
their steps, so requests that arrive together share one batched forward pass
and a request that arrives later does not wait for the others to finish.

`generate` and `stream` run one request on its own (benchmarks, tests and
in-process callers); the server goes through the scheduler instead. Both share
the per-sequence decoding here (`SequenceState`): token ids come from the
engine, and this module turns them into text pieces, applies stop strings, EOS
and the token budget, and counts tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slmops.core.errors import InvalidSpec

DEFAULT_MAX_TOKENS = 64
MAX_TOP_LOGPROBS = 20


@dataclass
class Generation:
    """The result of one completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (token budget)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives (ids and logprobs)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Sampling:
    """What a cohort shares: decoding options and the adapter (None: the base model)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Cohort(Protocol):
    """Sequences decoded together; `step` returns one new token per row."""

    rows: int

    def step(self, want_logits: bool) -> tuple[list[int], np.ndarray | None]:
        """(next token per row, raw logits [rows, vocab] as float32 when asked)."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    """What the predictor's scheduler and HTTP layers call."""

    name: str  # "ort-genai" or "transformers"
    model_dir: str
    context_length: int
    eos_token_ids: set[int]
    adapters: list[str]

    def encode(self, text: str) -> list[int]: ...

    def new_decoder(self) -> Callable[[int], str]: ...

    def token_text(self, token_id: int) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def start(self, prompts: list[list[int]], sampling: Sampling, max_new: int) -> Cohort: ...

    def apply_chat_template(self, messages: list[dict]) -> str: ...

    def generate(self, prompt: str, **kwargs: Any) -> Generation: ...

    def close(self) -> None: ...


class StopScanner:
    """Holds back just enough streamed text to cut it at the first stop string."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0

    def push(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; return (text now safe to emit, whether a stop string was hit)."""
        self.text += piece
        start = max(0, self.sent - self.hold)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.sent : end]
            self.text = self.text[:end]
            self.sent = end
            return out, True
        end = max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent : end]
        self.sent = end
        return out, False

    def flush(self) -> str:
        """The text still held back (call when generation ends without a stop string)."""
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


def check_options(max_tokens: int, temperature: float, top_p: float) -> None:
    """Raise one InvalidSpec naming every bad sampling option."""
    problems = []
    if not isinstance(max_tokens, int) or max_tokens < 1:
        problems.append(("max_tokens", f"must be a positive integer, not {max_tokens!r}"))
    if not 0.0 <= float(temperature) <= 2.0:
        problems.append(("temperature", f"must be between 0 and 2, not {temperature!r}"))
    if not 0.0 < float(top_p) <= 1.0:
        problems.append(("top_p", f"must be in (0, 1], not {top_p!r}"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])


def prompt_ids(engine: Engine, prompt: str, bos_token_id: int | None) -> list[int]:
    """The prompt's token ids, checked against the context; InvalidSpec naming `prompt`.

    A chat template that writes the BOS token itself (Llama 3) renders text that starts with it,
    and a tokenizer that adds BOS would then give two: one is dropped, as `apply_chat_template`
    (and training) tokenize such text without adding special tokens.
    """
    ids = engine.encode(prompt)
    if bos_token_id is not None and ids[:2] == [bos_token_id, bos_token_id]:
        ids = ids[1:]
    if not ids:
        if bos_token_id is None:
            raise InvalidSpec("prompt", "must not be empty")
        ids = [bos_token_id]
    if len(ids) >= engine.context_length:
        raise InvalidSpec(
            "prompt",
            f"has {len(ids)} tokens; the model's context holds {engine.context_length}",
        )
    return ids


def token_budget(engine: Engine, prompt_len: int, max_tokens: int | None, cap: int) -> int:
    """New tokens a request may generate; InvalidSpec naming max_tokens past the cap or context."""
    room = engine.context_length - prompt_len
    if max_tokens is None:
        return max(1, min(DEFAULT_MAX_TOKENS, room, cap))
    if max_tokens > cap:
        raise InvalidSpec("max_tokens", f"is {max_tokens}; this server allows at most {cap}")
    if max_tokens > room:
        raise InvalidSpec(
            "max_tokens",
            f"is {max_tokens}, but the prompt's {prompt_len} tokens leave room for {room} "
            f"in the model's context of {engine.context_length}",
        )
    return max_tokens


def top_logprobs(logits: np.ndarray, chosen: int, k: int) -> TokenLogprob:
    """Log-softmax of one row of logits: the chosen token's logprob and the k most likely."""
    row = logits.astype(np.float64)
    shifted = row - row.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    top: list[tuple[int, float]] = []
    if k > 0:
        best = np.argpartition(-logp, min(k, logp.size - 1))[:k]
        best = best[np.argsort(-logp[best], kind="stable")]
        top = [(int(i), float(logp[i])) for i in best]
    return TokenLogprob(int(chosen), float(logp[chosen]), top)


class SequenceState:
    """One sequence being decoded: its budget, stop strings, text so far and logprobs."""

    def __init__(
        self,
        engine: Engine,
        budget: int,
        stops: Sequence[str] = (),
        logprobs: int | None = None,
    ):
        self.eos = engine.eos_token_ids
        self.budget = budget
        self.scanner = StopScanner(stops)
        self.decode = engine.new_decoder()
        self.logprobs_k = logprobs  # None: no logprobs; 0: the chosen token's only
        self.count = 0
        self.tokens: list[int] = []  # generated ids, EOS included
        self.parts: list[str] = []
        self.token_logprobs: list[TokenLogprob] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int, logits: np.ndarray | None) -> tuple[str, TokenLogprob | None]:
        """Take one generated token; return (text now safe to emit, its logprob entry or None)."""
        self.count += 1
        self.tokens.append(token)
        if token in self.eos:
            self.finish_reason = "stop"
            return self._tail(), None
        entry = None
        if self.logprobs_k is not None and logits is not None:
            entry = top_logprobs(logits, token, self.logprobs_k)
            self.token_logprobs.append(entry)
        piece, stopped = self.scanner.push(self.decode(token))
        if stopped:
            self.finish_reason = "stop"
        elif self.count >= self.budget:
            self.finish_reason = "length"
            piece += self._tail()
        if piece:
            self.parts.append(piece)
        return piece, entry

    def _tail(self) -> str:
        tail = self.scanner.flush()
        if tail:
            self.parts.append(tail)
        return tail

    def result(self, prompt_tokens: int) -> Generation:
        return Generation(
            "".join(self.parts),
            prompt_tokens,
            self.count,
            self.finish_reason or "length",
            self.token_logprobs if self.logprobs_k is not None else None,
        )


class DecodingEngine:
    """What both engines share; subclasses supply tokens, decoding and `start`."""

    name = "engine"

    def __init__(self, model_dir: str | Path):
        self.model_dir = str(model_dir)
        self.context_length = 0
        self.eos_token_ids: set[int] = set()
        self.bos_token_id: int | None = None
        self.adapters: list[str] = []
        self._bytes: dict[int, bytes] = {}  # token id -> its bytes, from the vocabulary
        self._lock = threading.Lock()  # in-process generate/stream: one at a time

    # Subclasses implement these.
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def new_decoder(self) -> Callable[[int], str]:
        raise NotImplementedError

    def _decode_one(self, token_id: int) -> str:
        """One token's text from the tokenizer (for ids the vocabulary table lacks)."""
        raise NotImplementedError

    def _cohort(self, prompts: list[list[int]], sampling: Sampling, max_new: int) -> Cohort:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        data = self._bytes.get(token_id)
        return data.decode("utf-8", errors="replace") if data is not None else self._decode_one(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        data = self._bytes.get(token_id)
        return data if data is not None else self._decode_one(token_id).encode()

    def start(self, prompts: list[list[int]], sampling: Sampling, max_new: int) -> Cohort:
        self.check_adapter(sampling.adapter)
        return self._cohort(prompts, sampling, max_new)

    def apply_chat_template(self, messages: list[dict]) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (the engine is unusable afterwards)."""

    def check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            known = ", ".join(self.adapters) or "none"
            raise InvalidSpec("model", f"no adapter named {adapter!r} (loaded: {known})")

    def generate(self, prompt: str, **kwargs: Any) -> Generation:
        """Run to completion and return the text with token counts."""
        stream = self.stream(prompt, **kwargs)
        while True:
            try:
                next(stream)
            except StopIteration as done:
                return done.value

    def stream(
        self,
        prompt: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        adapter: str | None = None,
        logprobs: int | None = None,
    ) -> Generator[str, None, Generation]:
        """Yield text pieces as they are decoded; the generator returns the Generation.

        Sampling options are checked at once (InvalidSpec); the prompt's length
        is checked when the first piece is asked for. The budget is clamped to
        the context.
        """
        check_options(max_tokens, temperature, top_p)
        self.check_adapter(adapter)
        sampling = Sampling(float(temperature), float(top_p), seed, adapter)
        return self._run(prompt, max_tokens, sampling, list(stop or []), logprobs)

    def _run(
        self,
        prompt: str,
        max_tokens: int,
        sampling: Sampling,
        stop: list[str],
        logprobs: int | None,
    ) -> Generator[str, None, Generation]:
        with self._lock:
            ids = prompt_ids(self, prompt, self.bos_token_id)
            budget = min(max_tokens, self.context_length - len(ids))
            state = SequenceState(self, budget, stop, logprobs)
            cohort = self.start([ids], sampling, budget)
            try:
                while not state.done:
                    tokens, logits = cohort.step(logprobs is not None)
                    piece, _ = state.push(tokens[0], None if logits is None else logits[0])
                    if piece:
                        yield piece
            finally:
                cohort.close()
        return state.result(len(ids))
