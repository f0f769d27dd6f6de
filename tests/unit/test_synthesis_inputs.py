"""Prompts from JSONL, Parquet and CSV, with a template over columns; bad rows and columns are named."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slmops.api.v1 import synthesis_pb2
from slmops.core.errors import InvalidSpec
from slmops.synthesis.inputs import read_inputs
from slmops.synthesis.spec import from_proto

ROWS = [{"question": "2+2?", "context": "arithmetic", "answer": "4"},
        {"question": "Capital of France?", "context": "geography", "answer": "Paris"}]  # fmt: skip
TEMPLATE = "Q: {question}\nTopic: {context}"


@pytest.fixture(params=["jsonl", "parquet", "csv"])
def prompts_file(request, tmp_path):
    path = tmp_path / f"prompts.{request.param}"
    if request.param == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif request.param == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path.write_text("question,context,answer\n" + "".join(f'"{r["question"]}",{r["context"]},{r["answer"]}\n'
                                                               for r in ROWS))  # fmt: skip
    return path


def test_every_format_makes_prompts_from_the_template(prompts_file):
    prompts = read_inputs(str(prompts_file), TEMPLATE)
    assert [p.fields["prompt"] for p in prompts] == ["Q: 2+2?\nTopic: arithmetic",
                                                     "Q: Capital of France?\nTopic: geography"]  # fmt: skip
    assert prompts[1].fields["answer"] == "Paris"  # the other columns stay with the record
    with pytest.raises(InvalidSpec) as info:
        read_inputs(str(prompts_file), "Q: {question} ({source})")
    assert info.value.field == "spec.prompt_template" and "'source'" in str(info.value)
    assert "answer, context, question" in str(info.value)


def test_a_malformed_line_is_named_by_its_number(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n" + json.dumps({"context": "x"}) + "\n")
    with pytest.raises(InvalidSpec, match="line 2: not valid JSON"):
        read_inputs(str(path), TEMPLATE)
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"context": "x"}) + "\n")
    with pytest.raises(InvalidSpec, match="line 2: has no 'question'"):
        read_inputs(str(path), TEMPLATE)
    with pytest.raises(InvalidSpec, match="positional"):
        read_inputs(str(path), "Q: {}")


def test_the_spec_checks_the_template_against_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(path),
        prompt_template="{question} {missing}",
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://t/v1", model="m"),
    )
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    assert info.value.field == "spec.prompt_template" and "'missing'" in str(info.value)
    spec.prompt_template = TEMPLATE
    assert from_proto(spec).prompt_template == TEMPLATE
