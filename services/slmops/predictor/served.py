"""What one predictor serves, and how request handlers hand it work.

`Served` ties the engine, its scheduler and the limits to the names clients
use: the base model's name, and one name per LoRA adapter. `admit` reserves a
request's places in the queue before anything is tokenized, then tokenizes in
a thread of its own, so the event loop never waits on a tokenizer. `Inbox` carries
a request's scheduler events onto the event loop, so a handler awaits them
without holding a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slmops.core.errors import InvalidSpec
from slmops.predictor import engines
from slmops.predictor.engines import Engine, Generation, Sampling
from slmops.predictor.scheduler import Job, Limits, Scheduler

MAX_PROMPTS = 64  # prompts in one request (fewer when the queue is shorter)


class UnknownModel(LookupError):
    """The request names a model this predictor does not serve."""


@dataclass
class Served:
    name: str  # the base model's served name
    engine: Engine
    scheduler: Scheduler
    limits: Limits
    # One thread tokenizes, request after request: tokenizers are not all safe to share between threads.
    tokenizing: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="slmops-tokenize")
    )

    @classmethod
    def start(cls, name: str, engine: Engine, limits: Limits | None = None) -> Served:
        limits = limits or Limits()
        if name in engine.adapters:
            raise InvalidSpec("adapters", f"an adapter may not share the model's name {name!r}")
        return cls(name, engine, Scheduler(engine, limits), limits)

    @property
    def names(self) -> list[str]:
        return [self.name, *self.engine.adapters]

    def adapter_of(self, model: str) -> str | None:
        """The adapter a served name picks (None: the base); UnknownModel otherwise."""
        if model == self.name:
            return None
        if model in self.engine.adapters:
            return model
        raise UnknownModel(model)

    def job(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        n: int = 1,
        logprobs: int | None = None,
        sink: Callable[[tuple[Any, ...]], None],
        deadline: float,
    ) -> Job:
        """A scheduler job for one prompt (tokenized here); InvalidSpec naming the field that is wrong."""
        self.check_request(1, n)
        ids = engines.prompt_ids(self.engine, prompt, getattr(self.engine, "bos_token_id", None))
        budget = engines.token_budget(self.engine, len(ids), max_tokens, self.limits.max_tokens_cap)
        sampling = Sampling(float(temperature), float(top_p), seed, self.adapter_of(model))
        return Job(ids, budget, sampling, sink, n=n, stops=list(stop or []), logprobs=logprobs,
                   model=model, deadline=deadline)  # fmt: skip

    def check_request(self, prompts: int, n: int, param: str = "prompt") -> None:
        """What a request may ask before anything is tokenized; InvalidSpec naming the field past a limit."""
        if n > self.limits.max_concurrency:
            raise InvalidSpec(
                "n", f"is {n}; this server decodes at most {self.limits.max_concurrency} at once"
            )
        most = min(MAX_PROMPTS, self.limits.max_queue)
        if prompts > most:
            raise InvalidSpec(
                param, f"holds {prompts} prompts; this server takes at most {most} in one request"
            )

    async def admit(self, count: int, build: Callable[[], list[Job]]) -> list[Job]:
        """Reserve `count` places (Overloaded at once when the queue is full), then build the jobs in the
        tokenizing thread (tokenizing is the slow part) and submit them."""
        self.scheduler.reserve(count)
        try:
            jobs = await asyncio.get_running_loop().run_in_executor(self.tokenizing, build)
        except BaseException:
            self.scheduler.release(count)
            raise
        self.scheduler.submit_all(jobs, reserved=count)
        return jobs

    def close(self) -> None:
        self.tokenizing.shutdown(wait=False, cancel_futures=True)
        self.scheduler.stop()
        self.engine.close()


class Inbox:
    """Scheduler events for a request's jobs, delivered on the event loop as (job index, event)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()

    def sink(self, index: int) -> Callable[[tuple[Any, ...]], None]:
        def put(event: tuple[Any, ...]) -> None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

        return put

    async def events(
        self,
        expected_ends: int,
        gone: Callable[[], Awaitable[bool]] | None = None,
        poll_s: float = 0.5,
    ) -> AsyncIterator[tuple[int, tuple[Any, ...]]]:
        """Events until expected_ends sequences ended; stops early when gone() says the client left."""
        ends = 0
        while ends < expected_ends:
            try:
                index, event = await asyncio.wait_for(self.queue.get(), timeout=poll_s)
            except TimeoutError:
                if gone is not None and await gone():
                    return
                continue
            if event[0] == "error" and event[1] is None:
                yield index, event
                return
            if event[0] in ("end", "error"):
                ends += 1
            yield index, event


async def run_all(served: Served, jobs: list[Job], inbox: Inbox,
                  gone: Callable[[], Awaitable[bool]] | None = None) -> list[list[Generation]]:  # fmt: skip
    """Wait for every sequence of submitted jobs; raise the first error (cancelling the rest)."""
    results: list[list[Generation | None]] = [[None] * job.n for job in jobs]
    try:
        async for index, event in inbox.events(sum(job.n for job in jobs), gone):
            if event[0] == "error":
                raise event[2]
            if event[0] == "end":
                results[index][event[1]] = event[2]
    finally:
        for job in jobs:
            served.scheduler.cancel(job)
    if any(r is None for rows in results for r in rows):
        raise ConnectionAbortedError("the client went away")
    return results  # type: ignore[return-value]
