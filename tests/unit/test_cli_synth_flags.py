"""`slmops synth`'s quality filter, teacher tokenizer, system prompt and label flags become the
SynthesisSpec fields they name, as the service validates them.

No server: the parser and `synth_spec` are called directly, and each spec goes
through the service's own validation (`from_proto`).
"""

from __future__ import annotations

import json

import pytest

from slmops.cli.main import build_parser
from slmops.cli.synth_commands import synth_spec
from slmops.core.errors import InvalidSpec
from slmops.synthesis.spec import from_proto

ENDPOINT = ("--teacher-url", "https://api.example.com/v1", "--teacher-model", "big")


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(4)))
    return str(path)


def _spec(*flags: str):
    return synth_spec(build_parser().parse_args(["synth", *flags]))


def test_every_filter_flag_sets_its_answer_filter(prompts, tmp_path):
    schema = tmp_path / "answer.schema.json"
    schema.write_text(json.dumps({"type": "integer", "minimum": 0}))
    spec = _spec("--prompts", prompts, *ENDPOINT, "--filter-truncated", "--min-length", "1", "--max-length", "3",
                 "--json-schema", str(schema), "--reference-column", "answer", "--reference-match", "exact",
                 "--dedup", "near", "--keep-empty", "--refusal-pattern", "^no\\b", "--refusal-pattern", "nope")  # fmt: skip
    f = spec.filters
    assert (f.drop_truncated, f.min_chars, f.max_chars, f.keep_empty) == (True, 1, 3, True)
    assert (f.reference_column, f.reference_match, f.duplicates) == ("answer", "exact", "near")
    assert json.loads(f.json_schema) == {"type": "integer", "minimum": 0}
    assert list(f.refusal_patterns) == ["^no\\b", "nope"]
    config = from_proto(spec).filters
    assert (config.drop_truncated, config.min_chars, config.max_chars) == (True, 1, 3)
    assert config.json_schema == {"type": "integer", "minimum": 0} and config.duplicates == "near"
    assert config.refusal_patterns == ["^no\\b", "nope"] and not config.keep_refusals


def test_no_filter_flag_leaves_the_services_defaults(prompts):
    spec = _spec("--prompts", prompts, *ENDPOINT, "--keep-refusals", "--dedup", "exact")
    f = spec.filters
    assert not (f.drop_truncated or f.min_chars or f.max_chars or f.json_schema or f.reference_column)
    config = from_proto(spec).filters
    assert config.keep_refusals and config.duplicates == "exact" and config.reference_match == "normalized"
    assert from_proto(_spec("--prompts", prompts, *ENDPOINT)).filters.duplicates == "keep"


def test_bad_filter_values_are_refused_by_the_flag_or_named_by_the_service(prompts, tmp_path):
    with pytest.raises(SystemExit, match="--json-schema: cannot read"):
        _spec("--prompts", prompts, *ENDPOINT, "--json-schema", str(tmp_path / "missing.json"))
    with pytest.raises(SystemExit):  # argparse: not a choice
        _spec("--prompts", prompts, *ENDPOINT, "--dedup", "fuzzy")
    not_a_schema = tmp_path / "bad.json"
    not_a_schema.write_text("{not json")
    spec = _spec("--prompts", prompts, *ENDPOINT, "--min-length", "9", "--max-length", "3",
                 "--json-schema", str(not_a_schema), "--reference-column", "nowhere")  # fmt: skip
    with pytest.raises(InvalidSpec) as caught:
        from_proto(spec)
    fields = {field for field, _ in caught.value.problems}
    assert {"spec.filters.max_chars", "spec.filters.json_schema", "spec.filters.reference_column"} <= fields


def test_the_teachers_tokenizer_goes_to_the_endpoint_for_token_ids(prompts, tmp_path):
    from slmops.testing.tiny import train_tokenizer

    folder = train_tokenizer(["1+1=2", "2+2=4"], tmp_path / "tok", 260)
    spec = _spec("--prompts", prompts, *ENDPOINT, "--top-logprobs", "3", "--teacher-tokenizer", str(folder))
    assert spec.endpoint.tokenizer == folder.resolve().as_uri()
    assert from_proto(spec).teacher.tokenizer == folder.resolve().as_uri()
    hub = _spec("--prompts", prompts, *ENDPOINT, "--top-logprobs", "3", "--teacher-tokenizer", "org/teacher")
    assert hub.endpoint.tokenizer == "org/teacher"
    with pytest.raises(InvalidSpec, match="top_logprobs"):  # ids of no log-probabilities
        from_proto(_spec("--prompts", prompts, *ENDPOINT, "--teacher-tokenizer", "org/teacher"))
    with pytest.raises(SystemExit, match="--teacher-tokenizer only apply to an endpoint teacher"):
        _spec("--prompts", prompts, "--teacher-model-path", "org/teacher", "--teacher-tokenizer", "org/tok")


def test_the_system_prompt_and_labels(prompts):
    spec = _spec("--prompts", prompts, *ENDPOINT, "--chat", "--system-prompt", "Answer with a number.",
                 "--label", "team=math", "--label", "run=7")  # fmt: skip
    assert spec.system_prompt == "Answer with a number." and dict(spec.labels) == {"team": "math", "run": "7"}
    config = from_proto(spec)
    assert config.system_prompt == "Answer with a number." and config.teacher.chat
    with pytest.raises(InvalidSpec, match="system_prompt"):  # a completions teacher has no system turn
        from_proto(_spec("--prompts", prompts, *ENDPOINT, "--system-prompt", "Be brief."))
    with pytest.raises(SystemExit, match="--label expects KEY=VALUE"):
        _spec("--prompts", prompts, *ENDPOINT, "--label", "team")
