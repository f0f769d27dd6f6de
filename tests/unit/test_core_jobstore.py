from __future__ import annotations

import pytest

from slmops.core.errors import InvalidSpec, NotFound
from slmops.core.jobstore import JobRecord, JobStore


@pytest.fixture
def store(tmp_path):
    return JobStore(f"sqlite:///{tmp_path}/jobs.db")


def test_records_survive_a_new_store_on_the_same_database(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    JobStore(url).create(JobRecord(id="j1", kind="training", spec={"x": 1}, labels={"team": "a"}))
    again = JobStore(url)
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
        store.create(JobRecord(id=f"j{i}", kind="training", labels={"i": str(i % 2)}, created=100.0 + i))
    store.create(JobRecord(id="other", kind="conversion"))
    page, token = store.list("training", page_size=2)
    assert [r.id for r in page] == ["j4", "j3"] and token == "2"
    page, token = store.list("training", page_size=2, page_token=token)
    assert [r.id for r in page] == ["j2", "j1"]
    page, token = store.list("training", page_size=2, page_token=token)
    assert [r.id for r in page] == ["j0"] and token == ""
    assert [r.id for r in store.list("training", labels={"i": "1"})[0]] == ["j3", "j1"]
    with pytest.raises(InvalidSpec, match="page_token"):
        store.list("training", page_token="x")
    with pytest.raises(InvalidSpec, match="page_size"):
        store.list("training", page_size=10_000)
