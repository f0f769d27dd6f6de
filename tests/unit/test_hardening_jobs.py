"""Faults and floods at the job machinery: a Ray head that hangs or forgot its jobs, labels without
bound, metric labels chosen by clients.

Ray is a stand-in on loopback here: a listener that accepts and never answers, or a small HTTP
server answering as Ray 2.60's dashboard does (version probe, submit, job info, stop, logs) that
can "restart" and forget its jobs. The job store, StageJobs, RayJobs (with Ray's own
JobSubmissionClient) and the training service's gRPC server are real.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from slmops.api.v1 import common_pb2, training_pb2, training_pb2_grpc
from slmops.core import artifacts
from slmops.core.errors import InvalidSpec, Unavailable
from slmops.core.jobs.ray_jobs import RayJobLost, RayJobs, RayJobStatus
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import PAGE_BYTES, JobRecord, JobStore
from slmops.core.server import start_server
from slmops.predictor import metrics as predictor_metrics
from slmops.predictor.openai_api import make_router
from slmops.predictor.served import Served
from slmops.serving.validation import validate as validate_deployment
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training.service import registration
from tests.unit._fakes import RAY_VERSION, FakeRay, JsonHandler, serving

TIMEOUT_S = 0.5  # SLMOPS_RAY_TIMEOUT_S in these tests


async def until(predicate, timeout: float) -> float:
    """Seconds until predicate() held; AssertionError past timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SLMOPS_RAY_TIMEOUT_S", str(TIMEOUT_S))
    return tmp_path


# -- a Ray head that hangs --------------------------------------------------


@contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback HTTP address that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0), backlog=256)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@contextmanager
def hangs_after_probe() -> Iterator[str]:
    """A dashboard that answers the version probe, then hangs on every other request."""
    released = threading.Event()

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/api/version":
                return self.reply(RAY_VERSION)
            released.wait(30)

        do_POST = do_GET

    with serving(Handler) as url:
        try:
            yield url
        finally:
            released.set()


@pytest.mark.reliability(
    "the Ray head hangs (accepts and never answers, or hangs after the version probe) under 40 new jobs",
    expected="each Ray call fails within the Ray timeout; Get and List answer at once meanwhile",
)
@pytest.mark.parametrize("hang", [silent_listener, hangs_after_probe], ids=["silent", "after-probe"])
async def test_a_hung_ray_fails_its_calls_in_time_and_leaves_the_database_calls_alone(env, probe, hang):
    with hang() as address:
        jobs = StageJobs("training", JobStore(f"sqlite:///{env}/jobs.db"), RayJobs(address), poll_s=0.05)
        try:
            records = [await jobs.create({}, {}, "", {"n": str(i)}) for i in range(40)]  # more than any pool
            start = time.monotonic()
            got = await asyncio.wait_for(asyncio.to_thread(jobs.get, records[0].id), 2)
            listed, _ = await asyncio.wait_for(asyncio.to_thread(jobs.list, None, {"n": "7"}, 0, ""), 2)
            answered = time.monotonic() - start
            assert got.id == records[0].id and [r.id for r in listed] == [records[7].id]
            assert answered < 1.0
            # Each job's start asks Ray; no call waits past its timeout (3 of them at most, queued).
            failed_in = await until(lambda: all(jobs.get(r.id).state == "FAILED" for r in records), 10)
            reason = jobs.get(records[-1].id).reason
            assert re.search(r"not reachable|timed out|did not answer|cannot be looked up", reason), reason
            # A poll of a job already running fails within the timeout too (and is retried, not fatal).
            start = time.monotonic()
            with pytest.raises(Unavailable):
                await jobs.ray_engine.poll(JobRecord(id="x", kind="training", ray_job_id="slmops-x"))
            polled = time.monotonic() - start
            assert polled < 3 * TIMEOUT_S + 1.0
        finally:
            await jobs.close()
    probe.saw(f"Get+List answered in {answered:.2f} s; 40 jobs FAILED ({reason[:60]}...) within "
              f"{failed_in:.1f} s; a poll failed in {polled:.2f} s (timeout {TIMEOUT_S} s)")  # fmt: skip


# -- a Ray head that restarted and forgot its jobs ---------------------------


class ForgetfulDashboard:
    """Ray's Jobs API on loopback; `restart()` forgets every job, as a head without GCS persistence does."""

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}
        dashboard = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")  # api, jobs, <id>[, logs]
                if self.path == "/api/version":
                    return self.reply(RAY_VERSION)
                job = parts[2] if len(parts) > 2 else ""
                if job not in dashboard.jobs:
                    return self.reply(f"Job {job} does not exist", status=404)
                if parts[3:] == ["logs"]:
                    return self.reply({"logs": ""})
                return self.reply({"type": "SUBMISSION", "submission_id": job, "status": dashboard.jobs[job],
                                   "entrypoint": "python -m slmops.core.jobs.entry training"})  # fmt: skip

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/api/jobs/":
                    job = json.loads(body)["submission_id"]
                    dashboard.jobs[job] = "RUNNING"
                    return self.reply({"job_id": job, "submission_id": job})
                job = self.path.strip("/").split("/")[2]
                if job not in dashboard.jobs:
                    return self.reply(f"Job {job} does not exist", status=404)
                dashboard.jobs[job] = "STOPPED"
                return self.reply({"stopped": True})

        self.handler = Handler

    def restart(self) -> None:
        self.jobs.clear()


@pytest.mark.reliability(
    "the Ray head restarts and forgets a running job (its Jobs API answers 404)",
    expected="the job ends FAILED saying Ray no longer knows it; Cancel of another such job succeeds",
)
async def test_a_job_ray_no_longer_knows_fails_with_the_reason_and_cancel_succeeds(env, probe):
    dashboard = ForgetfulDashboard()
    with serving(dashboard.handler) as address:
        store = JobStore(f"sqlite:///{env}/jobs.db")
        polled = StageJobs("training", store, RayJobs(address), poll_s=0.05, owner="polled")
        idle = StageJobs(
            "training", store, RayJobs(address), poll_s=60, owner="idle"
        )  # polls once, then waits
        try:
            followed = await polled.create({}, {}, "", {})
            cancelled = await idle.create({}, {}, "", {})
            await until(lambda: polled.get(followed.id).state == "RUNNING"
                        and idle.get(cancelled.id).state == "RUNNING", 10)  # fmt: skip
            dashboard.restart()
            failed_in = await until(lambda: polled.get(followed.id).finished, 5)
            done = polled.get(followed.id)
            assert done.state == "FAILED"
            assert done.reason == (f"Ray no longer knows job slmops-{followed.id}: the Ray head restarted or "
                                   "the job was removed; create it again")  # fmt: skip
            start = time.monotonic()
            record = await idle.cancel(cancelled.id)
            cancel_s = time.monotonic() - start
            assert record.state == "CANCELLED"
        finally:
            await polled.close()
            await idle.close()
    probe.saw(f"FAILED {failed_in:.2f} s after the restart (poll every 0.05 s): {done.reason[:48]}...; "
              f"Cancel answered {record.state} in {cancel_s:.2f} s")  # fmt: skip


@pytest.mark.reliability(
    "the Ray head forgets a running synthesis job (a stage that continues from its checkpoint)",
    expected="the job is submitted again (-r1) rather than left RUNNING",
)
async def test_a_lost_restartable_job_is_submitted_again(env, probe):
    class Forgetful(FakeRay):
        def submit(self, stage, job_id, *args, restart: int = 0, **kwargs) -> str:
            self.submitted.append(job_id)
            return f"slmops-{job_id}" + (f"-r{restart}" if restart else "")

        def status(self, submission_id: str) -> RayJobStatus:
            if not submission_id.endswith("-r1"):
                raise RayJobLost(submission_id)
            return RayJobStatus("RUNNING", "")

    ray = Forgetful()
    jobs = StageJobs("synthesis", JobStore(f"sqlite:///{env}/jobs.db"), ray, poll_s=0.05)
    try:
        record = await jobs.create({}, {}, "", {})
        await until(lambda: jobs.get(record.id).ray_job_id.endswith("-r1"), 5)
        again = jobs.get(record.id)
        assert again.state == "RUNNING" and len(ray.submitted) == 2
        assert any("Ray no longer knows job" in e.message for e in jobs.store.events(record.id))
    finally:
        await jobs.close()
    probe.saw(f"submitted again as {again.ray_job_id.rsplit('-', 1)[-1]}, state {again.state}")


# -- labels without bound ----------------------------------------------------


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    tok = train_tokenizer(["12+34=46", "0123456789+="], root / "tok", vocab_size=258)
    build_model(root / "model", tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2)  # fmt: skip
    (root / "ds").mkdir()
    (root / "ds" / "train.jsonl").write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    return root


@pytest.fixture
async def training(model_root, env, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(model_root))  # where the model and the dataset lie
    jobs = StageJobs("training", JobStore(f"sqlite:///{env}/jobs.db"), FakeRay(), poll_s=0.05)
    running = await start_server("training-labels", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield training_pb2_grpc.TrainingServiceStub(channel)
    await channel.close()
    await running.stop(0)
    await jobs.close()


def _create(root, labels: dict[str, str]) -> training_pb2.CreateTrainingJobRequest:
    spec = training_pb2.TrainingSpec(method=training_pb2.SFT_DISTILL, labels=labels,
                                     base=training_pb2.ModelInit(model=str(root / "model")),
                                     dataset_uri=artifacts.to_uri(root / "ds"))  # fmt: skip
    return training_pb2.CreateTrainingJobRequest(spec=spec)


async def _refused(call) -> tuple[grpc.StatusCode, str, float]:
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details(), time.monotonic() - start


@pytest.mark.reliability(
    "Create with 10,000 labels, or 1 MB label values five times over (each List page would pass 4 MB)",
    expected='INVALID_ARGUMENT naming spec.labels / spec.labels["key"]; List keeps working for others',
)
async def test_labels_past_the_limits_are_refused_and_list_keeps_working(model_root, training, probe):
    stub = training
    code, details, many_s = await _refused(stub.CreateTrainingJob(
        _create(model_root, {f"k{i}": "v" for i in range(10_000)})))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.labels: has 10000 labels" in details
    for i in range(5):
        code, big, big_s = await _refused(
            stub.CreateTrainingJob(_create(model_root, {"big": f"{i}" * 2**20}))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and 'spec.labels["big"]' in big, big[:300]
        assert len(big) < 1000  # the value is not echoed
    kept = await stub.CreateTrainingJob(_create(model_root, {"team": "nlp", "slmops.io/run": "r-1"}))
    start = time.monotonic()
    listed = await stub.ListTrainingJobs(common_pb2.ListJobsRequest(page_size=500))
    list_s = time.monotonic() - start
    assert [job.id for job in listed.jobs] == [kept.id]
    code, filtered, _ = await _refused(stub.ListTrainingJobs(
        common_pb2.ListJobsRequest(labels={f"k{i}": "v" for i in range(10_000)})))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "labels: has 10000 labels" in filtered
    probe.saw(f"INVALID_ARGUMENT spec.labels in {many_s:.2f} s (10,000 labels), "
              f"spec.labels[\"big\"] in {big_s:.2f} s (1 MiB); List answered in {list_s:.2f} s")  # fmt: skip


@pytest.mark.reliability(
    "a deployment or a pipeline run is created with 100 labels or a key that is no label key",
    expected="INVALID_ARGUMENT naming spec.labels before anything is recorded",
)
def test_deployments_and_every_record_keep_to_the_label_limits(env, probe):
    with pytest.raises(InvalidSpec) as info:
        validate_deployment({"name": "web", "labels": {f"k{i}": "v" for i in range(100)}})
    assert "spec.labels" in [field for field, _ in info.value.problems]
    store = JobStore(f"sqlite:///{env}/jobs.db")
    with pytest.raises(InvalidSpec) as stored:
        store.create(JobRecord(id="pipe-1", kind="pipeline", labels={"no key!": "x"}))
    assert stored.value.field == 'spec.labels["no key!"]'
    assert store.list("pipeline")[0] == []
    probe.saw(
        f"deployment: {info.value.problems[0][0]} ...; pipeline run: {stored.value.field}, none recorded"
    )


@pytest.mark.reliability(
    "records whose specs are large fill a List page (page_size 500)",
    expected="the page ends early with a next token, each page small enough to send",
)
def test_a_list_page_ends_early_once_its_records_are_large(env, probe):
    store = JobStore(f"sqlite:///{env}/jobs.db")
    for i in range(6):
        store.create(
            JobRecord(id=f"j{i}", kind="training", spec={"notes": "x" * 2**20}, created=float(i + 1))
        )
    pages, token, seen = 0, "", []
    while True:
        page, token = store.list("training", page_size=500, page_token=token)
        pages += 1
        seen += [r.id for r in page]
        assert sum(len(json.dumps(r.spec)) for r in page) <= PAGE_BYTES + 2**20
        if not token:
            break
    assert seen == [f"j{i}" for i in reversed(range(6))] and pages >= 3
    probe.saw(f"6 records of 1 MiB listed in {pages} pages")


# -- metric labels chosen by clients -----------------------------------------


def _series() -> int:
    text = generate_latest(REGISTRY).decode()
    return sum(1 for line in text.splitlines() if line.startswith("slmops_predictor_"))


@pytest.mark.reliability(
    "a client asks a predictor for 1000 distinct unknown models and 1000 unknown paths",
    expected="the /metrics series stay bounded (unknown names count as one label value)",
)
def test_metric_series_stay_bounded_whatever_clients_name(probe):
    engine = SimpleNamespace(adapters={"ad-1": "/a"}, close=lambda: None)
    served = Served.start("tiny", engine)
    app = FastAPI()
    app.include_router(make_router(served))
    try:
        before = _series()
        with TestClient(app) as client:
            for i in range(1000):
                body = {"model": f"model-{i}", "messages": [{"role": "user", "content": "hi"}]}
                assert client.post("/openai/v1/chat/completions", json=body).status_code == 404
                assert client.get(f"/openai/v1/no-such-route-{i}").status_code == 404
        after_requests = _series()
        # Whatever a caller of the metrics passes, the label values come from a closed set.
        for i in range(1000):
            predictor_metrics.record(f"name-{i}", f"/path/{i}", 600 + i, 0.01, 1, 1)
            predictor_metrics.REJECTED.labels(f"reason {i}").inc()
        after_names = _series()
        for i in range(1000, 2000):
            predictor_metrics.record(f"name-{i}", f"/path/{i}", 600 + i, 0.01, 1, 1)
        assert _series() == after_names  # a plateau: a thousand more names add nothing
        assert after_requests - before <= 40 and after_names - before <= 40 * (
            predictor_metrics.MAX_MODELS + 2
        )
    finally:
        served.close()
    probe.saw(f"+{after_requests - before} series after 2000 requests, +{after_names - before} after 1000 "
              "names and reasons passed to the metrics directly, +0 for 1000 more names")  # fmt: skip
