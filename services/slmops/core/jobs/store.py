"""Job records and their progress events, kept through SQLAlchemy.

SQLite file by default, any SQLAlchemy URL (PostgreSQL in a cluster). Every
state change is committed before it is reported, so a service that dies and
restarts finds each job where it was and resumes watching it.

Several replicas may share one database. A job is followed by the replica
holding its *owner lease* (`claim`: one atomic UPDATE that succeeds only for
the current owner or when the lease has expired), renewed while it follows;
a replica that dies stops renewing and another takes the job over. Event
sequence numbers are unique per job (a unique index), so two writers can
never give two events one number; `apply` keeps a change of the record and
its events in one transaction, so a write cut off by a lost connection leaves
all of it or none. The schema is kept by Alembic migrations (core/jobs/migrations),
applied when a store opens; on PostgreSQL under an advisory lock, so replicas
starting together migrate one after the other.

On PostgreSQL, pooled connections are checked before use (`pool_pre_ping`), so
a store outlives a server restart; `is_transient` tells the errors of such an
outage (worth a retry) from the others.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Float, Index, Integer, String, Text, create_engine, func, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from slmops.core.errors import InvalidSpec, NotFound
from slmops.core.private_files import open_private, private_dir
from slmops.core.spec_checks import check_labels

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "DELETED"})
STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
MAX_PAGE = 500
DEFAULT_PAGE = 50
PAGE_BYTES = 2 * 2**20  # a List page ends early (with a next token) once its records hold this much JSON


class _Base(DeclarativeBase):
    pass


class _Job(_Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec_json: Mapped[str] = mapped_column(Text, default="{}")
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    result_json: Mapped[str] = mapped_column(Text, default="{}")
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    reason: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    output_uri: Mapped[str] = mapped_column(Text, default="")
    trace_id: Mapped[str] = mapped_column(String(32), default="")
    traceparent: Mapped[str] = mapped_column(String(64), default="")
    ray_job_id: Mapped[str] = mapped_column(String(128), default="")
    log_offset: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[float] = mapped_column(Float, index=True)
    updated: Mapped[float] = mapped_column(Float)
    owner: Mapped[str] = mapped_column(String(128), default="")
    lease_expires: Mapped[float] = mapped_column(Float, default=0.0)


class _Event(_Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("uq_job_events_job_sequence", "job_id", "sequence", unique=True),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(128), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    time: Mapped[float] = mapped_column(Float)


@dataclass
class JobRecord:
    id: str
    kind: str
    state: str = "PENDING"
    spec: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    message: str = ""
    fraction: float = 0.0
    output_uri: str = ""
    trace_id: str = ""
    traceparent: str = ""
    ray_job_id: str = ""
    log_offset: int = 0
    created: float = 0.0
    updated: float = 0.0
    owner: str = ""
    lease_expires: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass
class Event:
    job_id: str
    sequence: int
    state: str
    fraction: float
    message: str
    metrics: dict[str, float]
    time: float


_JSON_FIELDS = {
    "spec": "spec_json",
    "config": "config_json",
    "result": "result_json",
    "labels": "labels_json",
}
UNFINISHED = ("PENDING", "RUNNING")
MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x736C6D6F7073  # PostgreSQL advisory lock key ("slmops") held while migrating
POOL_RECYCLE_S = 300  # reopen pooled server connections older than this (idle timeouts of proxies)
EventRow = tuple[
    str, float, str, dict[str, float]
]  # (state, fraction, message, metrics) of an event to append


class LeaseLost(Exception):
    """Another replica owns the job now: this one must stop following it."""


def _check_labels(labels: dict[str, Any]) -> None:
    if problems := check_labels(labels):
        raise InvalidSpec(*problems[0], *problems[1:])


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is one of an outage (server restarting, connection dropped): retry it."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def migration_config(connection: Any = None) -> Any:
    """Alembic's configuration for the store's migrations, running on connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Any) -> None:
    """Bring the database to the newest schema with Alembic (a store made before migrations included).

    One transaction; on PostgreSQL it first takes an advisory lock, so a second
    replica starting at the same time waits, then finds the schema current.
    """
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        command.upgrade(migration_config(connection), "head")


def _to_record(row: _Job) -> JobRecord:
    values: dict[str, Any] = {}
    for name in JobRecord.__dataclass_fields__:
        column = _JSON_FIELDS.get(name)
        values[name] = json.loads(getattr(row, column) or "{}") if column else getattr(row, name)
    return JobRecord(**values)


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite database file readable by this user only before SQLite does (its -wal, -shm and
    -journal files take the database file's mode)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser()
    private_dir(path.parent)
    os.close(open_private(path, os.O_RDONLY))


class JobStore:
    """Jobs of one service. Thread-safe; every method is one short transaction."""

    def __init__(self, url: str):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            _private_sqlite_file(url)
        else:  # a server: connections may break under the pool (restart, failover)
            kwargs.update(pool_pre_ping=True, pool_recycle=POOL_RECYCLE_S)
        self.engine = create_engine(url, **kwargs)
        migrate(self.engine)
        self._lock = threading.Lock()

    def create(self, record: JobRecord, events: Iterable[EventRow] = ()) -> JobRecord:
        """Keep a new record, with its first events in the same transaction; InvalidSpec naming
        spec.labels when its labels pass the limits (core/spec_checks `check_labels`)."""
        _check_labels(record.labels)
        now = time.time()
        record.created = record.created or now
        record.updated = now
        row = _Job(
            **{
                name: (json.dumps(getattr(record, name)) if name in _JSON_FIELDS else getattr(record, name))
                for name in JobRecord.__dataclass_fields__
                if name not in _JSON_FIELDS
            },
            **{column: json.dumps(getattr(record, name)) for name, column in _JSON_FIELDS.items()},
        )
        with self._lock, Session(self.engine) as session:
            session.add(row)
            session.flush()
            self._append(session, record.id, list(events))
            session.commit()
        return record

    def get(self, job_id: str, kind: str | None = None) -> JobRecord:
        """The record of job_id; NotFound also when it belongs to another kind (shared databases)."""
        with Session(self.engine) as session:
            row = session.get(_Job, job_id)
            if row is None or (kind is not None and row.kind != kind):
                raise NotFound(kind or "job", job_id)
            return _to_record(row)

    def update(self, job_id: str, *, owner: str | None = None, **changes: Any) -> JobRecord:
        """Change fields of a job; with owner, only while that owner holds its lease (else LeaseLost)."""
        return self.apply(job_id, owner=owner, **changes)

    def apply(
        self, job_id: str, *, owner: str | None = None, events: Iterable[EventRow] = (), release: bool = False,
        if_unfinished: bool = False, **changes: Any,
    ) -> JobRecord:  # fmt: skip
        """Change fields of a job and append events, in one transaction: all of it is kept, or none.

        owner: only while that owner holds the lease (else LeaseLost). release:
        give the lease up too. if_unfinished: change nothing when the job has
        finished already (the record is returned as it is).
        """
        events = list(events)
        if "labels" in changes:
            _check_labels(changes["labels"])
        for _ in range(10):
            with self._lock, Session(self.engine) as session:
                row = session.get(_Job, job_id, with_for_update=True)
                if row is None:
                    raise NotFound("job", job_id)
                if owner is not None and row.owner != owner:
                    raise LeaseLost(f"job {job_id} is followed by {row.owner or 'nobody'} now")
                if if_unfinished and row.state in TERMINAL:
                    return _to_record(row)
                for name, value in changes.items():
                    column = _JSON_FIELDS.get(name)
                    setattr(row, column or name, json.dumps(value) if column else value)
                row.updated = time.time()
                if release:
                    row.owner, row.lease_expires = "", 0.0
                self._append(session, job_id, events)
                try:
                    session.commit()
                except IntegrityError:  # another writer took an event number first
                    session.rollback()
                    continue
                return _to_record(row)
        raise RuntimeError(f"could not number the events of job {job_id}: too many concurrent writers")

    @staticmethod
    def _append(session: Session, job_id: str, events: list[EventRow]) -> list[_Event]:
        """Add events with the job's next sequence numbers to the session (the unique index guards them)."""
        if not events:
            return []
        last = session.scalar(select(func.max(_Event.sequence)).where(_Event.job_id == job_id)) or 0
        now = time.time()
        rows = [_Event(job_id=job_id, sequence=last + i, state=state, fraction=fraction, message=message,
                       metrics_json=json.dumps(metrics or {}), time=now)
                for i, (state, fraction, message, metrics) in enumerate(events, 1)]  # fmt: skip
        session.add_all(rows)
        return rows

    def list(
        self,
        kind: str | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[JobRecord], str]:
        """Newest first. The page token is the offset of the next page. A page holds at most
        page_size records and, past its first, PAGE_BYTES of their JSON, so it can always be sent."""
        if problems := check_labels(labels or {}, "labels"):
            raise InvalidSpec(*problems[0], *problems[1:])
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidSpec("page_size", f"must be between 0 and {MAX_PAGE}")
        try:
            offset = int(page_token) if page_token else 0
            if offset < 0:
                raise ValueError
        except ValueError:
            raise InvalidSpec("page_token", "is not a token returned by a previous List call") from None
        size = page_size or DEFAULT_PAGE
        query = select(_Job).order_by(_Job.created.desc(), _Job.id)
        if kind:
            query = query.where(_Job.kind == kind)
        if state:
            query = query.where(_Job.state == state)
        for key, value in sorted((labels or {}).items()):
            query = query.where(self._label(key) == value)
        rows: list[JobRecord] = []
        more, held = False, 0
        with Session(self.engine) as session:
            for row in session.scalars(query.offset(offset).limit(size + 1)):
                held += sum(len(text) for text in (row.spec_json, row.result_json, row.labels_json,
                                                   row.reason, row.message))  # fmt: skip
                if len(rows) == size or (rows and held > PAGE_BYTES):
                    more = True
                    break
                rows.append(_to_record(row))
        return rows, str(offset + len(rows)) if more else ""

    def _label(self, key: str) -> Any:
        """SQL for the value of one label (the labels are a JSON object in text)."""
        if not key or any(c in key for c in '"\\'):
            raise InvalidSpec("labels", f"label key {key!r} must be non-empty, without quotes or backslashes")
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy import cast
            from sqlalchemy.dialects.postgresql import JSONB

            return cast(_Job.labels_json, JSONB)[key].astext
        return func.json_extract(_Job.labels_json, f'$."{key}"')

    # -- owner leases -----------------------------------------------------

    def claim(self, job_id: str, owner: str, ttl: float, active: tuple[str, ...] = UNFINISHED) -> bool:
        """Take or renew the lease on a job in an active state: True when owner holds it for ttl seconds."""
        now = time.time()
        statement = (
            update(_Job)
            .where(_Job.id == job_id, _Job.state.in_(active))
            .where(or_(_Job.owner == owner, _Job.owner == "", _Job.lease_expires < now))
            .values(owner=owner, lease_expires=now + ttl)
        )
        with self._lock, Session(self.engine) as session:
            claimed = session.execute(statement).rowcount == 1
            session.commit()
        return claimed

    def release(self, job_id: str, owner: str) -> None:
        """Give the lease up (a replica shutting down), so another replica can take the job at once."""
        statement = (
            update(_Job).where(_Job.id == job_id, _Job.owner == owner).values(owner="", lease_expires=0.0)
        )
        with self._lock, Session(self.engine) as session:
            session.execute(statement)
            session.commit()

    def claimable(self, kind: str, owner: str, active: tuple[str, ...] = UNFINISHED) -> list[str]:
        """Active jobs of kind that owner holds, or that nobody holds, or whose lease has expired."""
        query = select(_Job.id).where(_Job.kind == kind, _Job.state.in_(active))
        query = query.where(or_(_Job.owner == owner, _Job.owner == "", _Job.lease_expires < time.time()))
        with Session(self.engine) as session:
            return list(session.scalars(query.order_by(_Job.created)))

    def count_by_state(self, kind: str) -> dict[str, int]:
        """How many jobs of kind are in each state (states with none are left out)."""
        query = select(_Job.state, func.count()).where(_Job.kind == kind).group_by(_Job.state)
        with Session(self.engine) as session:
            return {state: int(count) for state, count in session.execute(query)}

    def unfinished(self, kind: str | None = None) -> list[JobRecord]:
        query = select(_Job).where(_Job.state.in_(UNFINISHED))
        if kind:
            query = query.where(_Job.kind == kind)
        with Session(self.engine) as session:
            return [_to_record(r) for r in session.scalars(query)]

    def add_event(
        self, job_id: str, state: str, fraction: float, message: str, metrics: dict[str, float] | None = None
    ) -> Event:
        """Append an event with the job's next sequence number (unique: a racing writer retries)."""
        for _ in range(10):
            with self._lock, Session(self.engine) as session:
                (event,) = self._append(session, job_id, [(state, fraction, message, metrics or {})])
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue
                return Event(job_id, event.sequence, state, fraction, message, metrics or {}, event.time)
        raise RuntimeError(f"could not number an event of job {job_id}: too many concurrent writers")

    def events(self, job_id: str, after_sequence: int = 0) -> list[Event]:
        query = (
            select(_Event)
            .where(_Event.job_id == job_id, _Event.sequence > after_sequence)
            .order_by(_Event.sequence)
        )
        with Session(self.engine) as session:
            return [
                Event(
                    e.job_id, e.sequence, e.state, e.fraction, e.message, json.loads(e.metrics_json), e.time
                )
                for e in session.scalars(query)
            ]
