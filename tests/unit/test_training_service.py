"""The training service in process: a real gRPC server and job core, a fake Ray.

Create refuses what the cluster can never run (FAILED_PRECONDITION) before
recording anything, goes ahead when Ray cannot be asked, and a finished job
reports the artifact kind its result names.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import grpc
import pytest

from slmops.api.v1 import common_pb2, training_pb2, training_pb2_grpc
from slmops.core import artifacts
from slmops.core.errors import Unavailable
from slmops.core.jobs.ray_jobs import RayJobs
from slmops.core.jobs.servicer import status_proto
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.core.server import start_server
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training.service import registration
from tests.unit._fakes import RAY_VERSION, FakeRay, JsonHandler, serving
from tests.unit._problem_paths import problem_paths


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tok = train_tokenizer(["12+34=46", "0123456789+="], root / "tok", vocab_size=258)
    build_model(
        root / "model", tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    (root / "ds").mkdir()
    (root / "ds" / "train.jsonl").write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    return root


@pytest.fixture
async def service(root, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(root))
    ray = FakeRay()
    jobs = StageJobs("training", JobStore(f"sqlite:///{root}/jobs-{id(ray)}.db"), ray, poll_s=0.05)
    running = await start_server("training-test", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield training_pb2_grpc.TrainingServiceStub(channel), ray, jobs
    await channel.close()
    await running.stop(0)
    await jobs.close()


def _request(root, **resources) -> training_pb2.CreateTrainingJobRequest:
    spec = training_pb2.TrainingSpec(
        method=training_pb2.SFT_DISTILL,
        base=training_pb2.ModelInit(model=str(root / "model")),
        dataset_uri=artifacts.to_uri(root / "ds"),
        resources=resources,
    )
    return training_pb2.CreateTrainingJobRequest(spec=spec)


async def _refused(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateTrainingJob(request)
    return info.value.code(), info.value.details()


async def test_more_cpus_than_the_cluster_has_is_refused_before_recording(root, service):
    stub, ray, _ = service
    code, details = await _refused(stub, _request(root, num_workers=4, cpus_per_worker=2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "spec.resources" in details and "8 CPUs (4 workers x 2) against 4 in the cluster" in details
    assert not (await stub.ListTrainingJobs(common_pb2.ListJobsRequest())).jobs
    assert ray.submitted == []


async def test_gpus_the_cluster_lacks_are_refused(root, service):
    stub, ray, _ = service
    ray.total = {"CPU": 64.0, "GPU": 1.0}
    code, details = await _refused(stub, _request(root, num_workers=2, gpus_per_worker=1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "2 GPUs (2 workers x 1) against 1 in the cluster" in details and "CPUs" not in details


async def test_a_job_that_fits_is_created_and_submitted(root, service):
    stub, ray, _ = service
    job = await stub.CreateTrainingJob(_request(root, num_workers=4, cpus_per_worker=1))
    assert job.status.state == common_pb2.PENDING
    assert job.spec.resources.num_workers == 4
    assert (await stub.GetTrainingJob(common_pb2.GetJobRequest(id=job.id))).id == job.id


async def test_a_cluster_that_cannot_be_asked_does_not_block(root, service):
    stub, ray, _ = service
    ray.total = None
    job = await stub.CreateTrainingJob(_request(root, num_workers=16, cpus_per_worker=8))
    assert job.id and job.status.state == common_pb2.PENDING


async def test_bad_specs_are_still_invalid_argument(root, service):
    stub, ray, _ = service
    ray.total = {"CPU": 0.0, "GPU": 0.0}  # the spec is refused before the cluster is asked
    request = _request(root, num_workers=2)
    request.spec.hyperparameters.batch_size = 3
    code, details = await _refused(stub, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.hyperparameters.batch_size" in details


async def test_a_finished_job_reports_the_kind_its_result_names(root, service):
    stub, _, jobs = service
    job = await stub.CreateTrainingJob(_request(root))
    output = artifacts.to_uri(root / "out")
    jobs.store.update(
        job.id, state="SUCCEEDED", output_uri=output, result={"kind": "adapter", "output_uri": output}
    )
    status = (await stub.GetTrainingJob(common_pb2.GetJobRequest(id=job.id))).status
    assert (status.output.uri, status.output.kind) == (output, "adapter")


def test_status_kind_falls_back_to_the_stage_kind():
    record = JobRecord(id="j", kind="training", spec={}, config={}, state="SUCCEEDED", output_uri="file:///o")
    assert status_proto(record, "checkpoint").output.kind == "checkpoint"
    record.result = {"kind": "adapter", "metrics": {"steps": 3}}
    status = status_proto(record, "checkpoint")
    assert (status.output.kind, status.metrics["steps"]) == ("adapter", 3.0)
    record.state = "RUNNING"
    assert not status_proto(record, "checkpoint").HasField("output")


# -- RayJobs.cluster_resources against a fake dashboard -----------------------------


class Dashboard(JsonHandler):
    """Answers what JobSubmissionClient and the state API's node list ask, as Ray 2.60's dashboard does."""

    nodes: list[dict] = []
    status = 200
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        from ray.util.state.common import ListApiResponse

        Dashboard.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path == "/api/version":
            body = RAY_VERSION
        elif self.path.startswith("/api/v0/nodes"):
            listed = ListApiResponse(
                total=len(self.nodes),
                num_after_truncation=len(self.nodes),
                num_filtered=len(self.nodes),
                result=self.nodes,
            )
            ok = self.status == 200
            body = {
                "result": ok,
                "msg": "" if ok else "GCS down",
                "data": {"result": asdict(listed) if ok else None},
            }
        else:
            self.send_error(404)
            return
        self.reply(body, self.status if self.path != "/api/version" else 200)


@pytest.fixture
def dashboard():
    Dashboard.seen, Dashboard.status = [], 200
    Dashboard.nodes = [
        {
            "node_id": "a",
            "state": "ALIVE",
            "resources_total": {"CPU": 4.0, "memory": 8e9, "node:10.0.0.1": 1.0},
        },
        {"node_id": "b", "state": "ALIVE", "resources_total": {"CPU": 2.0, "GPU": 1.0}},
        {"node_id": "c", "state": "DEAD", "resources_total": {"CPU": 16.0, "GPU": 8.0}},
    ]
    with serving(Dashboard) as url:
        yield url


def test_cluster_resources_sums_alive_nodes_with_the_clients_auth(dashboard):
    ray = RayJobs(dashboard)
    ray._jobs()._headers["Authorization"] = "Bearer secret-token"  # what Ray's token auth puts there
    assert ray.cluster_resources() == {"CPU": 6.0, "GPU": 1.0}
    path, auth = Dashboard.seen[-1]
    assert path.startswith("/api/v0/nodes?") and "limit=10000" in path
    assert auth == "Bearer secret-token"


def test_cluster_resources_unavailable_when_ray_cannot_answer(dashboard):
    Dashboard.status = 500
    with pytest.raises(Unavailable, match="GCS down"):
        RayJobs(dashboard).cluster_resources()
    with pytest.raises(Unavailable):
        RayJobs("http://127.0.0.1:9").cluster_resources()


async def test_every_problem_comes_back_at_once_named_by_its_full_path(root, service):
    stub, ray, _ = service
    request = _request(root, num_workers=3)
    request.spec.hyperparameters.learning_rate = -1  # a nested range
    request.spec.hyperparameters.batch_size = 10  # cross-field: 10 does not split over 3 workers
    request.spec.max_failures = -2  # a top-level range
    code, details = await _refused(stub, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(problem_paths(details)) == [
        "spec.hyperparameters.batch_size",
        "spec.hyperparameters.learning_rate",
        "spec.max_failures",
    ], details
    assert "10 does not split evenly over 3 workers" in details
    assert ray.submitted == []
