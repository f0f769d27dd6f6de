"""Validation of SynthesisSpec: defaults, and every problem reported at once by proto path."""

from __future__ import annotations

import json

import grpc
import pytest

from slmops.api.v1 import common_pb2, synthesis_pb2, synthesis_pb2_grpc
from slmops.core.errors import InvalidSpec
from slmops.core.jobs.stage import StageJobs
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.synthesis import job
from slmops.synthesis.config import EndpointTeacherConfig, LocalTeacherConfig, SynthesisConfig
from slmops.synthesis.service import registration
from slmops.synthesis.spec import from_proto
from tests.unit._fakes import FakeRay


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLMOPS_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("SLMOPS_ARTIFACT_ROOT", raising=False)
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n")
    return path


def _problems(spec) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    return {field: problem for field, problem in info.value.problems}


def test_defaults_are_applied(prompts):
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="https://api.example.com/v1/", model="big"),
    )
    config = from_proto(spec)
    assert isinstance(config.teacher, EndpointTeacherConfig)
    assert config.prompts_uri == f"file://{prompts}"
    assert config.teacher.base_url == "https://api.example.com/v1"
    assert (config.teacher.max_concurrency, config.teacher.timeout_s) == (4, 60.0)
    assert config.validation_fraction == 0.1 and config.num_shards == 2
    assert config.sampling.max_tokens == 64 and config.sampling.top_p == 1.0 and config.sampling.seed is None
    # The config survives the JSON round trip the job runner makes.
    assert SynthesisConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json")))) == config


def test_every_problem_is_reported_at_once(prompts, tmp_path):
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri="/etc/passwd",
        endpoint=synthesis_pb2.TeacherEndpoint(
            base_url="ftp://x", api_key_env="not a name", max_concurrency=-1
        ),
        sampling=common_pb2.SamplingParams(temperature=3, top_p=1.5, max_tokens=9000, top_logprobs=21),
        validation_fraction=0.95,
        num_shards=-2,
        system_prompt="be brief",
    )
    problems = _problems(spec)
    assert "outside the allowed roots" in problems["spec.prompts_uri"]
    assert "http(s) URL" in problems["spec.endpoint.base_url"]
    assert "is required" in problems["spec.endpoint.model"]
    assert "environment variable name" in problems["spec.endpoint.api_key_env"]
    assert "greater than or equal to 1" in problems["spec.endpoint.max_concurrency"]
    for field in ("temperature", "top_p", "max_tokens", "top_logprobs"):
        assert f"spec.sampling.{field}" in problems
    assert "less than or equal to 0.9" in problems["spec.validation_fraction"]
    assert "spec.num_shards" in problems
    assert "chat teachers" in problems["spec.system_prompt"]


def test_an_api_key_is_rejected_without_being_echoed(prompts):
    secret = "sk-proj-abcdef0123456789abcdef0123456789"
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(
            base_url="https://api.example.com/v1", model="m", api_key_env=secret
        ),
    )
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    assert info.value.field == "spec.endpoint.api_key_env"
    assert "looks like an API key" in str(info.value)
    assert secret not in str(info.value)


def test_a_teacher_is_required_and_local_teachers_are_checked(prompts, tmp_path):
    assert "spec.teacher" in _problems(synthesis_pb2.SynthesisSpec(prompts_uri=str(prompts)))

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        local=synthesis_pb2.LocalTeacher(model=str(not_a_model), device="tpu"),
    )
    problems = _problems(spec)
    assert "no config.json" in problems["spec.local.model"]
    assert "cpu or cuda" in problems["spec.local.device"]

    hub = from_proto(
        synthesis_pb2.SynthesisSpec(
            prompts_uri=str(prompts),
            local=synthesis_pb2.LocalTeacher(model="Qwen/Qwen2.5-7B-Instruct"),
        )
    )
    assert isinstance(hub.teacher, LocalTeacherConfig) and hub.teacher.device == "cpu"


def test_bad_prompt_lines_are_reported_by_number_before_any_work(prompts):
    prompts.write_text('{"prompt": "ok"}\nnot json\n\n["a list"]\n{"prompt": ""}\n')
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t:8000/v1", model="m"),
    )
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    messages = [p for f, p in info.value.problems if f == "spec.prompts_uri"]
    assert [m.split(":")[0] for m in messages] == ["line 2", "line 4", "line 5"]


def test_missing_prompts_file_and_memory_quantity(prompts, tmp_path):
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(tmp_path / "nope.jsonl"),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t:8000/v1", model="m"),
        resources=common_pb2.ResourceRequest(memory="lots"),
    )
    problems = _problems(spec)
    assert "does not exist" in problems["spec.prompts_uri"]
    assert "4Gi" in problems["spec.resources.memory"]
    ok = spec.__class__()
    ok.CopyFrom(spec)
    ok.prompts_uri = str(prompts)
    ok.resources.memory = "2Gi"
    assert from_proto(ok).resources.memory_bytes == 2 * 2**30


def _with_tokenizer(prompts, tokenizer: str, top_logprobs: int = 2):
    return synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t:8000/v1", model="m", tokenizer=tokenizer),
        sampling=common_pb2.SamplingParams(top_logprobs=top_logprobs),
    )


def test_the_endpoint_tokenizer_is_checked(prompts, tmp_path):
    from slmops.testing.tiny import train_tokenizer

    folder = train_tokenizer(["1+2=3", "4+5=9"], tmp_path / "tok", vocab_size=260)
    config = from_proto(_with_tokenizer(prompts, str(folder)))
    assert config.teacher.tokenizer == f"file://{folder}"
    hub = from_proto(_with_tokenizer(prompts, "Qwen/Qwen2.5-7B-Instruct"))
    assert hub.teacher.tokenizer == "Qwen/Qwen2.5-7B-Instruct"  # loaded by the job

    field = "spec.endpoint.tokenizer"
    not_a_tokenizer = tmp_path / "empty"
    not_a_tokenizer.mkdir()
    assert "cannot be loaded" in _problems(_with_tokenizer(prompts, str(not_a_tokenizer)))[field]
    assert "does not exist" in _problems(_with_tokenizer(prompts, str(tmp_path / "nope")))[field]
    assert "allowed roots" in _problems(_with_tokenizer(prompts, "/usr/share"))[field]
    assert "hub id" in _problems(_with_tokenizer(prompts, "s3://bucket/tok"))[field]
    # Token ids are for top-k log-probabilities: a tokenizer without them is refused.
    without_logprobs = _with_tokenizer(prompts, str(folder), top_logprobs=0)
    assert "spec.sampling.top_logprobs" in _problems(without_logprobs)[field]


def test_the_job_refuses_what_the_service_refuses(prompts):
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t:8000/v1", model="m"),
    )
    config = from_proto(spec).model_dump(mode="json")
    config["teacher"]["max_concurrency"] = 300
    with pytest.raises(InvalidSpec) as job_refusal:
        job.run(config, f"file://{prompts.parent}/out", lambda *args, **kwargs: None)
    spec.endpoint.max_concurrency = 300
    field = "spec.endpoint.max_concurrency"
    assert job_refusal.value.problems == [(field, _problems(spec)[field])]
    assert "less than or equal to 256" in _problems(spec)[field]


def test_zero_is_a_sampling_seed_and_unset_is_none(prompts):
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t:8000/v1", model="m", backoff_s=0),
        sampling=common_pb2.SamplingParams(seed=0),
    )
    config = from_proto(spec)
    assert config.sampling.seed == 0 and config.teacher.backoff_s == 0.0
    spec.sampling.ClearField("seed")
    spec.endpoint.ClearField("backoff_s")
    config = from_proto(spec)
    assert config.sampling.seed is None and config.teacher.backoff_s == 0.5


@pytest.fixture
async def synthesis_stub(prompts):
    jobs = StageJobs("synthesis", JobStore(f"sqlite:///{prompts.parent}/jobs.sqlite"), FakeRay(), poll_s=0.05)
    running = await start_server("synthesis-test", [registration(jobs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield synthesis_pb2_grpc.SynthesisServiceStub(channel)
    await channel.close()
    await running.stop(0)
    await jobs.close()


async def test_create_names_every_problem_by_its_full_path(prompts, synthesis_stub):
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t:8000/v1", model="m", max_concurrency=300),
        samples_per_prompt=2,  # greedy sampling: one answer per prompt at most
        num_shards=5000,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await synthesis_stub.CreateSynthesisJob(synthesis_pb2.CreateSynthesisJobRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [part.split(": ", 1)[0] for part in info.value.details().split("; ")]
    assert sorted(fields) == [
        "spec.endpoint.max_concurrency",
        "spec.num_shards",
        "spec.samples_per_prompt",
    ]
