"""The pipeline file's shape: stages by kind, references by name, every problem named by its path."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from slmops.api.v1 import pipeline_pb2, pipeline_pb2_grpc
from slmops.core.errors import InvalidSpec
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.pipeline.definition import parse, schema
from slmops.pipeline.service import PipelineRuns, registration
from tests.unit._problem_paths import problem_paths

GOOD = """
name: distill
stages:
  prompts: {kind: prompts, uri: /data/p.jsonl}
  answers: {kind: synthesize, prompts: prompts, spec: {endpoint: {base_url: "http://t/v1", model: big}}}
  student:
    kind: train
    dataset: answers
    spec: {method: SFT_DISTILL, base: {model: m, from_config: true, config_overrides: {hidden_size: "64"}}}
  int4: {kind: convert, model: student, spec: {precision: INT4}}
  serve: {kind: deploy, model: student, spec: {name: student}}
  canary: {kind: deploy, model: int4, canary_of: serve, canary_percent: 10}
  eval:
    kind: evaluate
    dataset: prompts
    targets: [{name: fp32, deploy: serve}, {name: int4, deploy: canary}]
    spec: {reference: fp32, gate: {candidate: int4, min_retention: 0.9}}
  gate: {kind: gate, evaluation: eval}
  rollout: {kind: rollout, canary: canary, gate: gate}
"""


def problems(text: str) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        parse(text)
    return dict(info.value.problems)


def test_stages_parse_in_file_order_with_their_specs():
    definition = parse(GOOD)
    assert definition.name == "distill"
    assert definition.order() == ["prompts", "answers", "student", "int4", "serve", "canary", "eval", "gate",
                                  "rollout"]  # fmt: skip
    assert definition.specs["student"].base.config_overrides["hidden_size"] == "64"
    assert definition.refs("eval") == {"dataset": ["prompts"], "targets": ["serve", "canary"]}
    assert definition.pending_fields("student") == ["spec.dataset_uri"]
    assert set(definition.pending_fields("canary")) == {"spec.model_uri", "spec.name"}
    assert definition.pending_fields("eval") == ["spec.dataset_uri", "spec.targets[0]", "spec.targets[1]"]


def test_unknown_keys_wrong_types_and_missing_references_name_their_path():
    text = (
        GOOD.replace("canary_percent: 10", "canary_percent: ten")
        .replace("dataset: answers", "dataset: answerz")
        .replace("spec: {precision: INT4}", "spec: {precision: INT4}, colour: red")
    )
    found = problems(text)
    assert "names no stage ('answerz')" in found["spec.definition_yaml.stages.student.dataset"]
    assert "integer" in found["spec.definition_yaml.stages.canary.canary_percent"]
    assert "Extra inputs" in found["spec.definition_yaml.stages.int4.colour"]


def test_a_reference_must_name_an_earlier_stage_of_the_right_kind():
    found = problems("""
stages:
  student: {kind: train, dataset: later, spec: {method: FULL, base: {model: m}}}
  later: {kind: dataset, uri: /d}
  int4: {kind: convert, model: later}
""")
    assert "must come before" in found["spec.definition_yaml.stages.student.dataset"]
    assert "is a dataset stage; want train or model" in found["spec.definition_yaml.stages.int4.model"]


def test_a_spec_field_of_the_wrong_type_is_named_by_its_stage():
    found = problems("stages:\n  s: {kind: train, dataset_uri: x}\n")
    assert "Extra inputs" in found["spec.definition_yaml.stages.s.dataset_uri"]
    found = problems("stages:\n  s: {kind: train, spec: {method: NOPE, dataset_uri: /d}}\n")
    assert "NOPE" in found["spec.definition_yaml.stages.s.spec"]


def test_a_stage_without_its_input_needs_the_spec_field():
    found = problems("stages:\n  e: {kind: evaluate, targets: [{name: a, base_url: 'http://x/v1'}]}\n")
    assert "spec.dataset_uri" in found["spec.definition_yaml.stages.e.dataset"]
    found = problems("stages:\n  d: {kind: deploy, spec: {model_uri: /m}}\n")
    assert "required" in found["spec.definition_yaml.stages.d.spec.name"]
    found = problems("stages:\n  x: {kind: mystery}\n")
    assert "kind" in next(iter(found.values())) or "mystery" in next(iter(found.values()))


@pytest.mark.parametrize("text", ["", "[1, 2]", "a: [", "name: only-a-name", "stages: {}"])
def test_bad_files_are_invalid(text):
    with pytest.raises(InvalidSpec) as info:
        parse(text)
    assert info.value.field.startswith("spec.definition_yaml")


def test_the_published_schema_is_the_files_schema():
    published = Path(__file__).resolve().parents[2] / "docs" / "pipeline.schema.json"
    assert json.loads(published.read_text()) == schema(), (
        "regenerate: slmops pipeline schema > docs/pipeline.schema.json"
    )


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")))
def test_the_examples_are_valid_pipeline_files(example):
    import jsonschema
    import yaml

    data = yaml.safe_load(example.read_text())
    jsonschema.validate(data, schema())
    assert parse(example.read_text()).order()


async def test_every_problem_comes_back_at_once_through_create(tmp_path):
    """Through the real servicer in process: a top-level key, a reference and a stage's range."""
    runs = PipelineRuns(JobStore(f"sqlite:///{tmp_path}/pipeline.db"), check_stages=False)
    running = await start_server("pipeline-test", [registration(runs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    text = """
name: p
bogus: 1
stages:
  student: {kind: train, dataset: data, spec: {method: FULL, base: {model: m}}}
  data: {kind: dataset, uri: /d}
  serve: {kind: deploy, model: student, canary_percent: 150, spec: {name: s}}
"""
    try:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        spec = pipeline_pb2.PipelineSpec(definition_yaml=text)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreatePipelineRun(pipeline_pb2.CreatePipelineRunRequest(spec=spec))
    finally:
        await channel.close()
        await running.stop(0)
        await runs.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert sorted(problem_paths(details)) == [
        "spec.definition_yaml.bogus",
        "spec.definition_yaml.stages.serve.canary_percent",
        "spec.definition_yaml.stages.student.dataset",
    ], details
    assert "must be less than or equal to 99, got 150" in details
