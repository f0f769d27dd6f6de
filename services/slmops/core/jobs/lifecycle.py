"""One lifecycle for work the services run: record, submit, follow, cancel, resume after a restart.

A `Lifecycle` keeps records in a `JobStore` and drives each through an
`Engine`, which is what differs between kinds of work:

- stage jobs run on Ray (`RayEngine`: a Ray job per record, progress and the
  result read from its log);
- pipeline runs run in the pipeline service's own process (pipeline/service.py).

What the lifecycle guarantees, whatever the engine:

- Replicas on one database share the work through owner leases
  (core/jobs/store): a replica follows only the records it has claimed, renews
  each lease while it follows, and a sweep every third of the lease claims
  unfinished records whose owner stopped renewing (a replica that died) or
  that nobody holds (after a restart).
- Work is started at most once per record: before submitting, the engine is
  asked whether the record's work exists already (`find`), so a replica
  killed between starting the work and recording its handle finds it again.
- A failed status poll is retried with backoff, never taken as the work's
  failure (an engine that learns the work is gone, as Ray forgets a job when
  its head restarts, says so with a FAILED update); so is a database outage (a PostgreSQL restart): following resumes
  from what was committed, since what one poll saw is kept in one transaction.
  Cancel reports CANCELLED only once the engine has stopped the work.
- Only the lease holder finishes a record it follows: a replica whose lease ran
  out gets LeaseLost instead of overwriting the new owner's work. Cancel, a
  user's command, finishes a record from any replica.
- Database calls run in worker threads, off the event loop; Watch wakes on
  this replica's own events and polls slowly for other replicas' writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from slmops.core import settings
from slmops.core.errors import Conflict, Unavailable
from slmops.core.jobs.store import Event, EventRow, JobRecord, JobStore, LeaseLost, is_transient

log = logging.getLogger(__name__)

WATCH_POLL_S = 1.0  # how often Watch looks for events written by other replicas
MAX_POLL_BACKOFF_S = 30.0
WATCH_OUTAGE_S = 60.0  # how long Watch rides over a database outage before it answers Unavailable


@dataclass(frozen=True)
class States:
    """The names a kind gives the lifecycle's states (deployments: DEPLOYING, READY, FAILED, DELETED)."""

    pending: str = "PENDING"
    running: str = "RUNNING"
    succeeded: str = "SUCCEEDED"
    failed: str = "FAILED"
    cancelled: str = "CANCELLED"

    @property
    def active(self) -> tuple[str, ...]:
        return (self.pending, self.running)

    def of(self, engine_state: str) -> str:
        """The kind's name for an engine state (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        return {"PENDING": self.pending, "RUNNING": self.running, "SUCCEEDED": self.succeeded,
                "FAILED": self.failed, "STOPPED": self.cancelled}.get(engine_state, "")  # fmt: skip


JOB_STATES = States()


@dataclass
class Update:
    """What an engine saw of a record's work since the last poll."""

    state: str = ""  # "", PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED
    events: list[tuple[float, str, dict[str, float]]] = field(
        default_factory=list
    )  # (fraction, message, metrics)
    result: dict[str, Any] | None = None
    reason: str = ""  # why it FAILED
    cursor: int | None = None  # the engine's read position (e.g. log offset), kept in the record
    message: str = ""  # says what a change of state means ("ready at http://...")
    handle: str = ""  # the work's new handle, when the engine restarted it


class Engine(Protocol):
    """How one kind of work starts, is observed and stops. Handles are strings kept in the record."""

    async def find(self, record: JobRecord) -> str:
        """The handle of work already started for record (lost before it was recorded), or ''."""

    async def attached(self, record: JobRecord) -> bool:
        """Whether the handle the record holds still reaches its work from this process."""

    async def submit(self, record: JobRecord) -> str:
        """Start the record's work; its handle."""

    async def poll(self, record: JobRecord) -> Update:
        """What happened since record.log_offset; Unavailable when it cannot be asked now."""

    async def stop(self, record: JobRecord) -> bool:
        """Stop the work: True when it is stopped (or had ended), False when it could not be."""


class Lifecycle:
    """Records of one kind, each followed by exactly one replica until it finishes."""

    def __init__(
        self, kind: str, store: JobStore, engine: Engine, *, poll_s: float | None = None,
        lease_s: float | None = None, owner: str = "", states: States = JOB_STATES,
    ):  # fmt: skip
        self.kind, self.store, self.engine, self.states = kind, store, engine, states
        self.poll_s = poll_s if poll_s is not None else float(settings.get("job_poll_s"))
        self.lease_s = lease_s if lease_s is not None else float(settings.get("lease_s"))
        self.owner = owner or f"{socket.gethostname()[:100]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._changed: dict[str, asyncio.Event] = {}
        self.takeovers = 0  # records taken over from another replica whose lease ran out (core/metrics.py)

    # -- commands ---------------------------------------------------------

    async def record(self, record: JobRecord, first_message: str = "queued") -> JobRecord:
        """Keep a new record and start following it here."""
        record.state = self.states.pending
        await asyncio.to_thread(self.store.create, record, [(self.states.pending, 0.0, first_message, {})])
        self.notify(record.id)
        if await self._claim(record.id):
            self._follow(record.id)
        return record

    def get(self, record_id: str) -> JobRecord:
        return self.store.get(record_id, self.kind)

    def list(self, state: str | None, labels: dict[str, str], page_size: int, page_token: str):
        return self.store.list(self.kind, state, labels, page_size, page_token)

    async def cancel(self, record_id: str) -> JobRecord:
        """Stop the work and mark it CANCELLED; Unavailable when the engine could not stop it."""
        record = await asyncio.to_thread(self.store.get, record_id, self.kind)
        if record.finished:
            raise Conflict(f"{self.kind} {record_id} already finished ({record.state}); nothing to cancel")
        if not record.ray_job_id:
            record.ray_job_id = await self.engine.find(record)
        if record.ray_job_id and not await self.engine.stop(record):
            raise Unavailable(
                f"could not stop {self.kind} {record_id} ({record.ray_job_id}); it is still running"
            )
        await asyncio.to_thread(self.finish, record_id, self.states.cancelled, "cancelled by request")
        task = self._tasks.pop(record_id, None)
        if task:
            task.cancel()
        return await asyncio.to_thread(self.store.get, record_id)

    async def watch(
        self, record_id: str, after_sequence: int = 0, until: Callable[[JobRecord], bool] | None = None
    ) -> AsyncIterator[Event]:
        """Events after after_sequence, live, until the record has finished (or `until(record)` holds)."""
        done = until or (lambda record: record.finished)
        await asyncio.to_thread(self.store.get, record_id, self.kind)  # NotFound before streaming anything
        sequence = after_sequence
        changed = self._changed.setdefault(record_id, asyncio.Event())
        outage_since: float | None = None
        while True:
            changed.clear()
            try:
                for event in await asyncio.to_thread(self.store.events, record_id, sequence):
                    sequence = event.sequence
                    yield event
                record = await asyncio.to_thread(self.store.get, record_id)
                if done(record) and not await asyncio.to_thread(self.store.events, record_id, sequence):
                    return
                outage_since = None
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = asyncio.get_running_loop().time()
                outage_since = outage_since if outage_since is not None else now
                if now - outage_since > WATCH_OUTAGE_S:
                    raise Unavailable(f"the job store is unreachable: {type(exc).__name__}") from exc
                log.warning("%s %s: watching paused, the job store is unreachable (%s)", self.kind, record_id,
                            type(exc).__name__)  # fmt: skip
            try:
                await asyncio.wait_for(changed.wait(), WATCH_POLL_S)
            except TimeoutError:
                pass  # another replica may have written

    async def event(self, record_id: str, state: str, fraction: float, message: str,
                    metrics: dict[str, float] | None = None) -> None:  # fmt: skip
        await asyncio.to_thread(self.store.add_event, record_id, state, fraction, message, metrics)
        self.notify(record_id)

    def notify(self, record_id: str) -> None:
        changed = self._changed.get(record_id)
        if changed is not None:
            changed.set()

    def finish(self, record_id: str, state: str, reason: str, *, owner: str | None = None,
               events: list[EventRow] | None = None, **changes: Any) -> None:  # fmt: skip
        """End a record (once) with its state and reason, and give its lease up, in one transaction.

        owner: only while that owner holds the lease (LeaseLost otherwise): the
        follower passes its own, Cancel none. events: ones to keep before the last.
        """
        record = self.store.get(record_id)
        if record.finished:
            return
        message = changes.pop("message", reason)
        last = (state, changes.get("fraction", record.fraction), message,
                _numbers(changes.get("result", {}).get("metrics", {})))  # fmt: skip
        self.store.apply(record_id, owner=owner, events=[*(events or []), last], release=True, if_unfinished=True,
                         state=state, reason=reason if state != self.states.succeeded else "", message=message,
                         **changes)  # fmt: skip

    # -- following --------------------------------------------------------

    def resume(self) -> None:
        """Start the sweep that claims and follows unfinished records (after a restart, or a dead replica's)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Stop following; the leases are released so another replica takes the records at once."""
        followed = list(self._tasks)
        tasks = [t for t in (self._sweeper, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for record_id in followed:
            await asyncio.to_thread(self.store.release, record_id, self.owner)
        self._tasks.clear()
        self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            try:
                for record_id in await asyncio.to_thread(self.store.claimable, self.kind, self.owner,
                                                         self.states.active):  # fmt: skip
                    if record_id in self._tasks:
                        continue
                    before = await asyncio.to_thread(self.store.get, record_id)
                    if await self._claim(record_id):
                        if before.owner and before.owner != self.owner:
                            self.takeovers += 1
                            log.info("%s %s: following it (owner %s), taken over from %s, whose lease ran out",
                                     self.kind, record_id, self.owner, before.owner)  # fmt: skip
                        else:
                            log.info("%s %s: following it (owner %s)", self.kind, record_id, self.owner)
                        self._follow(record_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweeping for unfinished %s records failed; trying again", self.kind)
            await asyncio.sleep(self.lease_s / 3)

    async def _claim(self, record_id: str) -> bool:
        return await asyncio.to_thread(
            self.store.claim, record_id, self.owner, self.lease_s, self.states.active
        )

    def _follow(self, record_id: str) -> None:
        """Follow a claimed record, once: the sweep and a Create may both claim it (one owner, one task)."""
        task = self._tasks.get(record_id)
        if task is not None and not task.done():
            return
        self._tasks[record_id] = asyncio.get_running_loop().create_task(self._run(record_id))

    async def _run(self, record_id: str) -> None:
        try:
            await self._follow_through_outages(record_id)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            log.info("%s %s: %s; no longer following it", self.kind, record_id, exc)
        except Unavailable as exc:
            log.warning("%s %s: %s", self.kind, record_id, exc)
            await self._fail(record_id, str(exc))
        except Exception as exc:
            log.exception("%s %s: unexpected error while following it", self.kind, record_id)
            await self._fail(record_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if self._tasks.get(record_id) is asyncio.current_task():
                self._tasks.pop(record_id, None)
            self.notify(record_id)

    async def _follow_through_outages(self, record_id: str) -> None:
        """Start and poll the record's work; a database outage pauses it (with backoff), never fails it.

        Starting again is safe (the engine finds the work it started) and so is
        polling again (each poll's effects were committed whole, or not at all).
        """
        backoff = max(self.poll_s, 0.1)
        while True:
            try:
                await self._start(await asyncio.to_thread(self.store.get, record_id))
                await self._poll(record_id)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("%s %s: the job store is unreachable (%s); trying again in %.1fs", self.kind,
                            record_id, type(exc).__name__, backoff)  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_POLL_BACKOFF_S, self.lease_s / 3)

    async def _fail(self, record_id: str, reason: str) -> None:
        """Finish the record FAILED, if this replica still holds its lease."""
        try:
            await asyncio.to_thread(self.finish, record_id, self.states.failed, reason, owner=self.owner)
        except LeaseLost as exc:
            log.info("%s %s: not marked failed (%s): %s", self.kind, record_id, exc, reason)

    async def _start(self, record: JobRecord) -> None:
        """Make sure the record's work runs: still attached, found again, or submitted once."""
        if record.finished or (record.ray_job_id and await self.engine.attached(record)):
            return
        handle = await self.engine.find(record)
        message = "found its work again" if handle else "submitted"
        if not handle:
            handle = await self.engine.submit(record)
        else:
            log.info("%s %s: found its work again (%s)", self.kind, record.id, handle)
        await asyncio.to_thread(
            self.store.update, record.id, owner=self.owner, ray_job_id=handle, message=message
        )
        self.notify(record.id)

    async def _poll(self, record_id: str) -> None:
        backoff = self.poll_s
        while True:
            if not await self._claim(record_id):
                record = await asyncio.to_thread(self.store.get, record_id)
                if not record.finished:
                    raise LeaseLost(f"{self.kind} {record_id} is followed by {record.owner} now")
                return
            record = await asyncio.to_thread(self.store.get, record_id)
            if record.finished:
                return
            try:
                update = await self.engine.poll(record)
            except Unavailable as exc:  # the engine hiccupped: the work itself may be fine
                log.warning("%s %s: %s; asking again in %.1fs", self.kind, record_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_S, self.lease_s / 3)
                continue
            backoff = self.poll_s
            finished = await asyncio.to_thread(self._apply, record, update)
            self.notify(record_id)
            if finished:
                return
            await asyncio.sleep(self.poll_s)

    def _apply(self, record: JobRecord, update: Update) -> bool:
        """Keep what the engine saw; True once the record has finished."""
        state = self.states.of(update.state)
        changes: dict[str, Any] = {}
        if update.cursor is not None and update.cursor != record.log_offset:
            changes["log_offset"] = update.cursor
        if update.handle:
            changes["ray_job_id"] = update.handle
        if update.result is not None:
            changes["result"] = update.result
        events: list[EventRow] = []
        current = record.state
        if (
            state in self.states.active and state != current
        ):  # between the active states, both ways (a restart)
            said = update.message or state.lower()
            changes.update(state=state, message=said)
            events.append((state, 1.0 if update.message and state == self.states.running else record.fraction,
                           said, {}))  # fmt: skip
            current = state
        fraction, message = record.fraction, record.message
        for fraction, message, metrics in update.events:
            events.append((current, fraction, message, metrics))
        if update.events:
            changes.update(fraction=fraction, message=message)
        result = update.result if update.result is not None else record.result
        if state == self.states.succeeded:
            output = (result or {}).get("output_uri") or record.output_uri
            changes.update(
                fraction=1.0, message=update.message or "done", result=result or {}, output_uri=output
            )
            self.finish(record.id, state, "", owner=self.owner, events=events, **changes)
            return True
        if state in (self.states.failed, self.states.cancelled):
            changes.pop("message", None)  # the reason is the last word
            self.finish(record.id, state, update.reason or f"the work ended {update.state}", owner=self.owner,
                        events=events, **changes)  # fmt: skip
            return True
        if changes or events:  # what this poll saw, kept whole: a poll cut off is read again from the cursor
            self.store.apply(record.id, owner=self.owner, events=events, **changes)
        return False


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
