"""Each quality filter drops what it should, keeps the rest, and is counted; bad filter specs name the field."""

from __future__ import annotations

import json

import pytest

from slmops.api.v1 import synthesis_pb2
from slmops.core.errors import InvalidSpec
from slmops.synthesis.filters import AnswerFilter, FiltersConfig
from slmops.synthesis.spec import from_proto


def _run(
    config: FiltersConfig, answers: list[tuple[str, str]], fields: dict | None = None
) -> list[str | None]:
    checker = AnswerFilter(config)
    return [(lambda d: d and d[0])(checker.check(fields or {}, {"completion": text, "finish_reason": finish}))
            for text, finish in answers]  # fmt: skip


def test_the_defaults_drop_empty_answers_and_refusals_only():
    checker = AnswerFilter(FiltersConfig())
    cases = [("42", "stop"), ("  ", "stop"), ("I'm sorry, but I can't help with that.", "stop"),
             ("As an AI language model, I think 4.", "stop"), ("4", "length"), ("42", "stop")]  # fmt: skip
    dropped = [
        (lambda d: d and d[0])(checker.check({}, {"completion": t, "finish_reason": f})) for t, f in cases
    ]
    assert dropped == [None, "empty", "refusal", "refusal", None, None]  # truncated and duplicates are kept
    assert checker.metrics() == {"filtered_empty": 1.0, "filtered_refusal": 2.0}


def test_truncated_length_and_duplicates():
    config = FiltersConfig(drop_truncated=True, min_chars=2, max_chars=10, duplicates="near")
    answers = [("Paris.", "stop"), ("paris", "stop"), ("Lyon", "length"), ("x", "stop"),
               ("a very long answer", "stop"), ("Rome", "stop")]  # fmt: skip
    assert _run(config, answers) == [None, "duplicate", "truncated", "length", "length", None]
    exact = FiltersConfig(duplicates="exact")
    assert _run(exact, [("Paris.", "stop"), ("paris", "stop"), ("Paris.", "stop")]) == [
        None,
        None,
        "duplicate",
    ]


def test_json_schema_and_reference_answers():
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    answers = [('{"city": "Paris"}', "stop"), ("Paris", "stop"), ('{"town": "Paris"}', "stop")]
    assert _run(FiltersConfig(json_schema=schema), answers) == [None, "json_schema", "json_schema"]
    reference = FiltersConfig(reference_column="answer")
    assert _run(reference, [("68.", "stop"), ("69", "stop")], {"answer": "68"}) == [None, "reference"]
    contains = FiltersConfig(reference_column="answer", reference_match="contains")
    assert _run(contains, [("It is 68.", "stop")], {"answer": "68"}) == [None]


def test_bad_filter_specs_are_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts), endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t/v1", model="m"),
        filters=synthesis_pb2.AnswerFilters(refusal_patterns=["(unclosed"], json_schema='{"type": 12}',
                                            reference_column="expected", duplicates="fuzzy", min_chars=5,
                                            max_chars=2),
    )  # fmt: skip
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    fields = {field for field, _ in info.value.problems}
    assert {
        "spec.filters.refusal_patterns[0]",
        "spec.filters.json_schema",
        "spec.filters.reference_column",
        "spec.filters.duplicates",
        "spec.filters.max_chars",
    } <= fields, info.value.problems
    assert "'expected' is not a field of the prompts (they have answer, prompt)" in str(info.value)
    spec.filters.CopyFrom(
        synthesis_pb2.AnswerFilters(reference_column="answer", json_schema='{"type": "object"}')
    )
    config = from_proto(spec)
    assert config.filters.reference_column == "answer" and config.filters.json_schema == {"type": "object"}
