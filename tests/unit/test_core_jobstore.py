"""The job store on both backends it runs on: a SQLite file, and PostgreSQL (a throwaway cluster).

The same assertions run on each (`store_url`); the migration tests are
PostgreSQL's own: an empty database, one holding data at revision 0001, and two
replicas opening one database at once.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from slmops.core.errors import InvalidSpec, NotFound
from slmops.core.jobs.store import JobRecord, JobStore, LeaseLost, migration_config


@pytest.fixture
def store(store_url):
    return JobStore(store_url)


def test_records_survive_a_new_store_on_the_same_database(store_url):
    JobStore(store_url).create(JobRecord(id="j1", kind="training", spec={"x": 1}, labels={"team": "a"}))
    again = JobStore(store_url)
    record = again.get("j1")
    assert record.spec == {"x": 1} and record.labels == {"team": "a"} and record.state == "PENDING"
    assert [r.id for r in again.unfinished("training")] == ["j1"]


def test_update_events_and_sequence(store):
    store.create(JobRecord(id="j1", kind="training"))
    assert store.add_event("j1", "PENDING", 0.0, "queued").sequence == 1
    assert store.add_event("j1", "RUNNING", 0.5, "half", {"loss": 1.5}).sequence == 2
    store.update("j1", state="SUCCEEDED", result={"metrics": {"loss": 1.0}})
    assert store.get("j1").finished and store.get("j1").result["metrics"]["loss"] == 1.0
    events = store.events("j1", after_sequence=1)
    assert [e.message for e in events] == ["half"] and events[0].metrics == {"loss": 1.5}
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.update("nope", state="FAILED")


def test_list_pages_filters_and_rejects_bad_tokens(store):
    for i in range(5):
        store.create(JobRecord(id=f"j{i}", kind="training", labels={"i": str(i % 2), "team": "nlp"},
                               created=100.0 + i))  # fmt: skip
    store.create(JobRecord(id="other", kind="conversion", labels={"i": "1"}))
    page, token = store.list("training", page_size=2)
    assert [r.id for r in page] == ["j4", "j3"] and token == "2"
    page, token = store.list("training", page_size=2, page_token=token)
    assert [r.id for r in page] == ["j2", "j1"]
    page, token = store.list("training", page_size=2, page_token=token)
    assert [r.id for r in page] == ["j0"] and token == ""
    assert [r.id for r in store.list("training", labels={"i": "1"})[0]] == ["j3", "j1"]
    assert [r.id for r in store.list("training", labels={"i": "1", "team": "nlp"})[0]] == ["j3", "j1"]
    assert store.list("training", labels={"i": "1", "team": "cv"})[0] == []
    assert store.list("training", labels={"missing": "x"})[0] == []
    with pytest.raises(InvalidSpec, match="page_token"):
        store.list("training", page_token="x")
    with pytest.raises(InvalidSpec, match="page_size"):
        store.list("training", page_size=10_000)
    with pytest.raises(InvalidSpec, match="label key"):
        store.list("training", labels={'a"b': "x"})


def test_apply_keeps_a_change_and_its_events_whole_and_only_for_the_lease_holder(store):
    store.create(JobRecord(id="j1", kind="training"), [("PENDING", 0.0, "queued", {})])
    assert store.claim("j1", "a", ttl=60)
    store.apply("j1", owner="a", events=[("RUNNING", 0.2, "one", {}), ("RUNNING", 0.4, "two", {"x": 1.0})],
                state="RUNNING", fraction=0.4)  # fmt: skip
    with pytest.raises(LeaseLost):
        store.apply("j1", owner="b", events=[("FAILED", 0.4, "stale", {})], state="FAILED")
    assert [(e.sequence, e.message) for e in store.events("j1")] == [(1, "queued"), (2, "one"), (3, "two")]
    done = store.apply(
        "j1", owner="a", events=[("SUCCEEDED", 1.0, "done", {})], release=True, state="SUCCEEDED"
    )
    assert (done.state, done.owner, done.lease_expires) == ("SUCCEEDED", "", 0.0)
    again = store.apply("j1", events=[("FAILED", 1.0, "late", {})], if_unfinished=True, state="FAILED")
    assert again.state == "SUCCEEDED" and [e.message for e in store.events("j1")][-1] == "done"


def test_long_ids_and_owners_fit(store):
    """A revision id is a 63-character deployment name plus `.rev<n>`; an owner a 63-character host name and more."""
    revision = "d" * 63 + ".rev12"
    owner = "h" * 63 + "-123456-abcdef"
    store.create(
        JobRecord(id=revision, kind="serving-revision", state="DEPLOYING"),
        [("DEPLOYING", 0.0, "deploying", {})],
    )
    assert store.claim(revision, owner, ttl=60, active=("DEPLOYING",))
    assert store.get(revision).owner == owner and store.events(revision)[0].job_id == revision


def test_a_database_outage_is_answered_unavailable_so_that_clients_retry():
    import grpc
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from slmops.core.grpc_errors import status_for

    outage = OperationalError("SELECT 1", {}, Exception("the database system is shutting down"))
    assert (
        status_for(outage, "/slmops.v1.TrainingService/CreateTrainingJob")[0] == grpc.StatusCode.UNAVAILABLE
    )
    broken = ProgrammingError("SELECT nope", {}, Exception("column nope does not exist"))
    assert status_for(broken, "/slmops.v1.TrainingService/CreateTrainingJob")[0] == grpc.StatusCode.INTERNAL


# -- PostgreSQL: migrations ------------------------------------------------


def _revision(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(migration_config()).get_current_head()


def test_migrations_apply_to_an_empty_postgres_database(postgres):
    url = postgres.database("t_jobstore_empty")
    store = JobStore(url)
    assert _revision(url) == _head()
    names = set(inspect(store.engine).get_table_names())
    assert {"jobs", "job_events", "alembic_version"} <= names
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("job_events")}
    assert "uq_job_events_job_sequence" in indexes
    store.engine.dispose()


def test_a_postgres_database_at_0001_holding_jobs_is_upgraded_with_its_rows_intact(postgres):
    from alembic import command

    url = postgres.database("t_jobstore_0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migration_config(conn), "0001")
        conn.execute(text("INSERT INTO jobs (id, kind, state, spec_json, config_json, result_json, labels_json, "
                          "reason, message, fraction, output_uri, trace_id, traceparent, ray_job_id, log_offset, "
                          "created, updated) VALUES ('train-old', 'training', 'RUNNING', '{\"x\": 1}', '{}', '{}', "
                          "'{\"team\": \"nlp\"}', '', 'half', 0.5, 'file:///out', 't', 'p', 'slmops-train-old', "
                          "42, 100.0, 101.0)"))  # fmt: skip
        for sequence, message in ((1, "queued"), (2, "half")):
            conn.execute(text("INSERT INTO job_events (job_id, sequence, state, fraction, message, metrics_json, "
                              "time) VALUES ('train-old', :s, 'RUNNING', 0.5, :m, '{}', 100.0)"),
                         {"s": sequence, "m": message})  # fmt: skip
    engine.dispose()
    assert _revision(url) == "0001"

    store = JobStore(url)  # migrates to head
    assert _revision(url) == _head()
    record = store.get("train-old")
    assert (record.state, record.spec, record.labels, record.message, record.fraction, record.ray_job_id,
            record.log_offset, record.created) == ("RUNNING", {"x": 1}, {"team": "nlp"}, "half", 0.5,
                                                   "slmops-train-old", 42, 100.0)  # fmt: skip
    assert (record.owner, record.lease_expires) == ("", 0.0)  # the new columns' defaults
    assert [e.message for e in store.events("train-old")] == ["queued", "half"]
    assert store.claim("train-old", "replica-a", ttl=30)  # nobody holds it: a replica takes it over
    assert store.add_event("train-old", "RUNNING", 0.6, "more").sequence == 3
    store.engine.dispose()


def _open_at_once(url: str, count: int = 2) -> tuple[list[JobStore], list[BaseException]]:
    """Open `count` stores on one database from as many threads, released together."""
    start = threading.Barrier(count)
    opened: list[JobStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(JobStore(url))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return opened, errors


def test_two_replicas_opening_one_new_postgres_database_at_once_both_start(postgres):
    """Without a lock, both would create the tables and one would fail (duplicate table or version row)."""
    for attempt in range(3):
        url = postgres.database(f"t_jobstore_race_{attempt}")
        opened, errors = _open_at_once(url)
        assert errors == [] and len(opened) == 2
        assert _revision(url) == _head()
        opened[0].create(JobRecord(id="j1", kind="training"))
        assert opened[1].get("j1").kind == "training"
        for store in opened:
            store.engine.dispose()
