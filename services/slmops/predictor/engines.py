"""Text generation engines the predictor serves: ONNX Runtime GenAI or transformers.

`load_engine(model_dir)` picks ORT GenAI when the folder holds a
`genai_config.json` (the output of the conversion stage), else a Hugging Face
checkpoint run by transformers. Both share one decoding loop here: token ids
come from the engine, and this module turns them into text pieces, applies
stop strings, EOS and the token budget, and counts tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from slmops.core.errors import InvalidSpec


@dataclass
class Generation:
    """The result of one completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (token budget)


@runtime_checkable
class Engine(Protocol):
    """What the predictor's HTTP layers call; implementations are thread-safe."""

    name: str  # "ort-genai" or "transformers"
    model_dir: str

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Generation: ...

    def stream(self, prompt: str, **kwargs: object) -> Iterator[str]: ...

    def apply_chat_template(self, messages: list[dict]) -> str: ...


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


class DecodingEngine:
    """Shared generate/stream logic; subclasses supply tokens and incremental decoding.

    One request runs at a time per engine (a lock); a stream holds the lock
    until it is exhausted or closed, so consume a stream in one thread.
    """

    name = "engine"

    def __init__(self, model_dir: str | Path):
        self.model_dir = str(model_dir)
        self.context_length = 0
        self.eos_token_ids: set[int] = set()
        self.bos_token_id: int | None = None
        self._lock = threading.Lock()

    # Subclasses implement these four.
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _new_decoder(self):  # -> Callable[[int], str]
        raise NotImplementedError

    def _tokens(
        self, prompt_ids: list[int], limit: int, temperature: float, top_p: float, seed: int | None
    ) -> Iterator[int]:
        raise NotImplementedError

    def apply_chat_template(self, messages: list[dict]) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (the engine is unusable afterwards)."""

    def generate(self, prompt: str, **kwargs) -> Generation:
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
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Generator[str, None, Generation]:
        """Yield text pieces as they are decoded; the generator returns the Generation.

        Sampling options are checked at once (InvalidSpec); the prompt's length
        is checked when the first piece is asked for.
        """
        check_options(max_tokens, temperature, top_p)
        return self._run(prompt, max_tokens, temperature, top_p, list(stop or []), seed)

    def _run(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: int | None,
    ) -> Generator[str, None, Generation]:
        with self._lock:
            prompt_ids = self.encode(prompt)
            if not prompt_ids:
                if self.bos_token_id is None:
                    raise InvalidSpec("prompt", "must not be empty")
                prompt_ids = [self.bos_token_id]
            if len(prompt_ids) >= self.context_length:
                raise InvalidSpec(
                    "prompt",
                    f"has {len(prompt_ids)} tokens; the model's context holds {self.context_length}",
                )
            limit = min(max_tokens, self.context_length - len(prompt_ids))
            scanner, decode = StopScanner(stop), self._new_decoder()
            parts: list[str] = []
            count, finish = 0, "length"
            for token in self._tokens(prompt_ids, limit, temperature, top_p, seed):
                count += 1
                if token in self.eos_token_ids:
                    finish = "stop"
                    break
                piece, stopped = scanner.push(decode(token))
                if piece:
                    parts.append(piece)
                    yield piece
                if stopped:
                    finish = "stop"
                    break
            tail = scanner.flush()  # empty after a stop string: the text was cut there
            if tail:
                parts.append(tail)
                yield tail
        return Generation("".join(parts), len(prompt_ids), count, finish)


def load_engine(model_dir: str | Path) -> Engine:
    """ORT GenAI for a folder with genai_config.json, else transformers."""
    path = Path(model_dir)
    if not path.is_dir():
        raise InvalidSpec("model_dir", f"{str(model_dir)!r} is not a folder")
    if (path / "genai_config.json").is_file():
        from slmops.predictor.ort_engine import OrtGenaiEngine

        return OrtGenaiEngine(path)
    if (path / "config.json").is_file():
        from slmops.predictor.hf_engine import TransformersEngine

        return TransformersEngine(path)
    raise InvalidSpec(
        "model_dir",
        f"{str(model_dir)!r} holds neither genai_config.json (ONNX Runtime GenAI) "
        "nor config.json (Hugging Face checkpoint)",
    )
