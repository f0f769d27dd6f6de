"""A job's output is new or empty, staged and moved into place before its manifest;
an input under the artifact root is a sealed artifact whose files match their hashes."""

from __future__ import annotations

import json

import grpc
import pytest

from slmops.api.v1 import common_pb2, synthesis_pb2, synthesis_pb2_grpc
from slmops.core import artifacts
from slmops.core.errors import AlreadyExists, InvalidSpec
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.synthesis.service import registration
from tests.unit._fakes import FakeRay


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    for name in ("SLMOPS_ARTIFACT_ROOT", "SLMOPS_ALLOWED_ROOTS", "SLMOPS_ALLOWED_SCHEMES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _artifact(folder, kind="dataset", files=None):
    folder.mkdir(parents=True)
    for name, text in (files or {"train.jsonl": "{}\n", "validation.jsonl": "{}\n"}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    artifacts.finalize(str(folder), kind)
    return folder


# -- outputs ---------------------------------------------------------------


def test_an_output_must_be_new_or_empty(data):
    artifacts.check_new_output(str(data / "new"))
    (data / "empty").mkdir()
    artifacts.check_new_output(str(data / "empty"))
    sealed = _artifact(data / "artifacts" / "datasets" / "old")
    with pytest.raises(AlreadyExists, match="spec.output_uri: .* is an existing artifact"):
        artifacts.check_new_output(str(sealed))
    (data / "full").mkdir()
    (data / "full" / "notes.txt").write_text("mine")
    with pytest.raises(AlreadyExists, match="not empty"):
        artifacts.check_new_output(str(data / "full"))
    with pytest.raises(AlreadyExists, match="existing file"):
        artifacts.check_new_output(str(data / "full" / "notes.txt"))


def test_a_staged_payload_appears_whole_and_only_then_is_sealed(data):
    target = data / "artifacts" / "reports" / "r1"
    with artifacts.staged(str(target)) as staging:
        assert not target.exists()
        folder = artifacts.local_path(staging)
        assert folder.parent == target.parent and folder.name.startswith(".r1.partial-")
        (folder / "report.json").write_text("{}")
    assert (target / "report.json").read_text() == "{}" and not folder.exists()
    assert not (target / "manifest.json").exists()  # the job seals it next
    artifacts.finalize(str(target), "report")
    assert artifacts.is_artifact(str(target))


def test_an_empty_target_folder_is_replaced_by_the_payload(data):
    (data / "out").mkdir()
    with artifacts.staged(str(data / "out")) as staging:
        (artifacts.local_path(staging) / "a.txt").write_text("a")
    assert (data / "out" / "a.txt").exists()


def test_a_failed_write_leaves_nothing_behind(data):
    target = data / "artifacts" / "datasets" / "d1"
    with pytest.raises(RuntimeError), artifacts.staged(str(target)) as staging:
        (artifacts.local_path(staging) / "train.jsonl").write_text("half")
        raise RuntimeError("teacher went away")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_target_filled_while_the_job_ran_is_not_overwritten(data):
    target = data / "out"
    with pytest.raises(AlreadyExists), artifacts.staged(str(target)) as staging:
        (artifacts.local_path(staging) / "mine.txt").write_text("mine")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert [p.name for p in data.iterdir() if p.name.startswith(".out")] == []


def test_staging_works_on_any_fsspec_store():
    import fsspec

    fs = fsspec.filesystem("memory")
    with artifacts.staged("memory://bucket/datasets/d2") as staging:
        assert staging.startswith("memory:///bucket/datasets/.d2.partial-")
        fs.pipe(f"{staging}/train.jsonl", b"{}\n")
    assert fs.cat("memory://bucket/datasets/d2/train.jsonl") == b"{}\n"
    assert fs.ls("memory://bucket/datasets", detail=False) == ["/bucket/datasets/d2"]


# -- inputs ----------------------------------------------------------------


def test_a_folder_under_the_artifact_root_without_a_manifest_is_refused(data):
    half = data / "artifacts" / "datasets" / "half"
    half.mkdir(parents=True)
    (half / "train.jsonl").write_text("{}\n")
    with pytest.raises(InvalidSpec, match="not a sealed artifact") as info:
        artifacts.open_input(str(half), "spec.dataset_uri")
    assert info.value.field == "spec.dataset_uri"
    with pytest.raises(InvalidSpec, match="not a sealed artifact"):
        artifacts.open_input(str(half / "train.jsonl"), "spec.dataset_uri")


def test_a_sealed_artifact_and_the_files_in_it_are_inputs(data):
    sealed = _artifact(data / "artifacts" / "datasets" / "ok")
    assert artifacts.open_input(str(sealed), "spec.dataset_uri").kind == "dataset"
    assert artifacts.open_input(str(sealed / "validation.jsonl"), "spec.dataset_uri").kind == "dataset"


def test_a_plain_model_folder_outside_the_artifact_root_is_an_input(data):
    folder = data / "hf" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert artifacts.open_input(str(folder), "spec.base.model") is None


@pytest.mark.parametrize("where", ["artifacts/checkpoints/c1", "elsewhere/c1"])
def test_files_that_differ_from_the_manifest_are_refused(data, where):
    sealed = _artifact(data / where, "checkpoint", {"config.json": "{}", "model.safetensors": "weights"})
    (sealed / "model.safetensors").write_text("other weights")
    with pytest.raises(InvalidSpec, match="model.safetensors changed since it was sealed") as info:
        artifacts.open_input(str(sealed), "spec.base.model")
    assert info.value.field == "spec.base.model"
    artifacts.open_input(str(sealed), "spec.base.model", verify=False)  # the cheap check at Create
    (sealed / "model.safetensors").unlink()
    (sealed / "pytorch_model.bin").write_text("smuggled")
    with pytest.raises(
        InvalidSpec, match="model.safetensors is missing.*pytorch_model.bin is not in its manifest"
    ):
        artifacts.open_input(str(sealed), "spec.base.model")


def test_only_the_file_read_is_hashed_when_the_input_is_one_file(data):
    sealed = _artifact(data / "artifacts" / "datasets" / "d")
    (sealed / "train.jsonl").write_text("changed\n")
    artifacts.open_input(str(sealed / "validation.jsonl"), "spec.dataset_uri")
    with pytest.raises(InvalidSpec, match="train.jsonl changed"):
        artifacts.open_input(str(sealed / "train.jsonl"), "spec.dataset_uri")


# -- through the real servicer -----------------------------------------------


@pytest.fixture
async def synthesis(data):
    ray = FakeRay()
    jobs = StageJobs("synthesis", JobStore(f"sqlite:///{data}/jobs.sqlite"), ray, poll_s=0.05)
    running = await start_server("synthesis-test", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield synthesis_pb2_grpc.SynthesisServiceStub(channel), ray
    await channel.close()
    await running.stop(0)
    await jobs.close()


def _request(data, output_uri: str) -> synthesis_pb2.CreateSynthesisJobRequest:
    prompts = data / "inputs" / "prompts.jsonl"
    prompts.parent.mkdir(exist_ok=True)
    prompts.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="https://api.example.com/v1", model="big"),
        output_uri=output_uri,
    )
    return synthesis_pb2.CreateSynthesisJobRequest(spec=spec)


async def _refused(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateSynthesisJob(request)
    return info.value.code(), info.value.details()


async def test_create_over_an_existing_artifact_is_already_exists(data, synthesis):
    stub, ray = synthesis
    sealed = _artifact(data / "artifacts" / "datasets" / "mine")
    code, details = await _refused(stub, _request(data, str(sealed)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "spec.output_uri" in details
    (data / "notes").mkdir()
    (data / "notes" / "a.txt").write_text("keep me")
    code, _ = await _refused(stub, _request(data, str(data / "notes")))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert not (await stub.ListSynthesisJobs(common_pb2.ListJobsRequest())).jobs and ray.submitted == []
    assert (data / "notes" / "a.txt").read_text() == "keep me"


async def test_create_into_a_new_or_empty_folder_is_accepted(data, synthesis):
    stub, _ = synthesis
    (data / "empty").mkdir()
    job = await stub.CreateSynthesisJob(_request(data, str(data / "empty")))
    assert job.status.state == common_pb2.PENDING


async def test_create_naming_a_forbidden_output_is_invalid_argument(data, synthesis):
    stub, _ = synthesis
    for uri in ("local:///tmp/out", "simplecache::s3://b/out", str(data / "db" / "out")):
        code, details = await _refused(stub, _request(data, uri))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.output_uri" in details
