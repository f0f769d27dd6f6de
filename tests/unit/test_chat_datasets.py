"""Conversations (`messages`) as dataset records: read, checked, stored in Parquet, and evaluated."""

from __future__ import annotations

import json

import pytest

from slmops.api.v1 import evaluation_pb2
from slmops.core.datasets import (
    TRAIN_FILE,
    VALIDATION_FILE,
    conversation,
    from_arrow,
    parse_prompts,
    read_records,
    to_arrow,
)
from slmops.core.errors import InvalidSpec
from slmops.evaluation import perplexity
from slmops.evaluation.client import TargetClient, load_examples
from slmops.evaluation.config import TargetConfig
from slmops.evaluation.examples import check_targets
from slmops.evaluation.spec import from_proto
from slmops.synthesis.dataset import write_dataset
from slmops.testing.standin import StandinServer

SYSTEM = {"role": "system", "content": "Answer with a number."}
CHAT = {"messages": [SYSTEM, {"role": "user", "content": "2+3="}, {"role": "assistant", "content": "5"}]}
MULTI = {
    "messages": [
        {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "and 2+2="},
        {"role": "assistant", "content": "4"},
    ]
}
PLAIN = {"prompt": "3+4=", "completion": "7"}
BOTH = {**CHAT, "prompt": "2+3=", "completion": "5"}  # what synthesis with a chat teacher writes


def _write(folder, name, rows) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return folder.as_uri()


def test_readers_take_conversations_beside_prompts_and_text(tmp_path):
    uri = _write(tmp_path / "ds", TRAIN_FILE, [CHAT, MULTI, PLAIN, BOTH])
    records = read_records(uri, TRAIN_FILE)
    assert records == [CHAT, MULTI, PLAIN, BOTH]
    assert conversation(records[0]) == (CHAT["messages"][:2], "5")
    assert conversation(records[1]) == (MULTI["messages"][:3], "4")
    assert conversation(records[2]) is None
    text = _write(tmp_path / "text", TRAIN_FILE, [{"text": "plain text"}, CHAT])
    assert len(read_records(text, TRAIN_FILE, allow_text=True)) == 2
    with pytest.raises(InvalidSpec, match="line 1 lacks string field"):
        read_records(text, TRAIN_FILE)


def test_bad_conversations_are_reported_by_line_with_the_field_named(tmp_path):
    bad = [
        CHAT,
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
        {"messages": [SYSTEM, {"role": "user", "content": "no answer"}]},
        {"messages": "hello"},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "assistant", "content": "an answer to nothing"}]},
        {"messages": [], "prompt": "p", "completion": "c"},  # a record with messages is a conversation
    ]
    uri = _write(tmp_path / "ds", VALIDATION_FILE, bad)
    with pytest.raises(InvalidSpec) as info:
        read_records(uri, VALIDATION_FILE, "spec.datasets[0]")
    problems = info.value.problems
    assert {field for field, _ in problems} == {"spec.datasets[0]"}
    assert [p for _, p in problems] == [
        "validation.jsonl line 2 messages[1].role: must be one of system, user, assistant, tool, developer",
        "validation.jsonl line 3 messages[1].role: the last turn must be the assistant's answer",
        "validation.jsonl line 4 messages: must be a non-empty list of {role, content} objects",
        "validation.jsonl line 5 messages[0].content: must be a string",
        "validation.jsonl line 6 messages: needs at least one turn before the assistant's answer",
        "validation.jsonl line 7 messages: must be a non-empty list of {role, content} objects",
    ]


def test_conversations_round_trip_through_parquet(tmp_path):
    named = {
        "messages": [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "yo"}]
    }
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "ab"}]}  # fmt: skip
    records = [CHAT, PLAIN, BOTH, MULTI, named]
    assert from_arrow(to_arrow(records)) == records
    assert from_arrow(to_arrow([CHAT, parts])) == [CHAT, parts]  # content parts: stored as JSON text
    teacher = {"teacher": {"model": "t", "finish_reason": "stop", "completion_tokens": 1}}
    stored = [{**r, **teacher} for r in records]
    write_dataset(str(tmp_path / "ds"), stored, validation_fraction=0.4, seed=0, rows_per_shard=2)
    uri = (tmp_path / "ds").as_uri()
    back = read_records(uri, TRAIN_FILE) + read_records(uri, VALIDATION_FILE)
    assert sorted(json.dumps(r, sort_keys=True) for r in back) == sorted(
        json.dumps(r, sort_keys=True) for r in stored
    )
    preview = [json.loads(line) for line in (tmp_path / "ds" / "preview.jsonl").read_text().splitlines()]
    assert all(r in stored for r in preview) and any("messages" in r for r in back)


def test_a_prompts_file_may_hold_conversations_when_asked():
    lines = [json.dumps(CHAT), json.dumps({"prompt": "x"}), json.dumps({"messages": [SYSTEM]})]
    with pytest.raises(InvalidSpec) as info:
        parse_prompts(lines[:2], "spec.prompts_uri")
    assert info.value.problems == [("spec.prompts_uri", 'line 1: needs a non-empty string field "prompt"')]
    with pytest.raises(InvalidSpec) as info:
        parse_prompts(lines, "spec.dataset_uri", allow_messages=True)
    assert info.value.problems == [
        ("spec.dataset_uri", "line 3: messages[0].role: the last turn must be the assistant's answer")
    ]
    assert [p.line for p in parse_prompts(lines[:2], "f", allow_messages=True)] == [1, 2]


def test_evaluation_examples_of_conversations(tmp_path):
    reference = {**CHAT, "answer": "five"}
    folder = _write(tmp_path / "ds", VALIDATION_FILE, [CHAT, BOTH, PLAIN, reference, MULTI])
    file = tmp_path / "held-out.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in [CHAT, BOTH, PLAIN, reference, MULTI]))
    for source in (folder, str(file)):
        examples = load_examples(source)
        assert [e.expected for e in examples] == ["5", "5", "7", "five", "4"]
        assert [e.messages for e in examples] == [CHAT["messages"][:2], CHAT["messages"][:2], None,
                                                  CHAT["messages"][:2], MULTI["messages"][:3]]  # fmt: skip
        assert [e.has_prompt for e in examples] == [False, True, True, False, False]
        assert examples[0].prompt == "2+3=" and examples[4].prompt == "and 2+2="  # the last user turn
        assert (
            examples[1].context(chat=True) == CHAT["messages"][:2]
            and examples[1].context(chat=False) == "2+3="
        )
    assert len(load_examples(folder, max_prompts=2)) == len(load_examples(str(file), max_prompts=2)) == 2

    targets = [TargetConfig(name="a", base_url="http://x/v1", chat=True),
               TargetConfig(name="b", base_url="http://x/v1"), TargetConfig(name="c", base_url="http://x/v1")]  # fmt: skip
    with pytest.raises(InvalidSpec) as info:
        check_targets(load_examples(folder), targets)
    assert [f for f, _ in info.value.problems] == ["spec.targets[1].chat", "spec.targets[2].chat"]
    assert "record 1 is a conversation (messages) without a prompt" in info.value.problems[0][1]
    check_targets(load_examples(_write(tmp_path / "both", VALIDATION_FILE, [BOTH, PLAIN])), targets)


def test_a_conversation_dataset_needs_chat_targets_at_create(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLMOPS_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("SLMOPS_ARTIFACT_ROOT", raising=False)
    uri = _write(tmp_path / "ds", VALIDATION_FILE, [CHAT])
    spec = evaluation_pb2.EvaluationSpec(
        targets=[
            evaluation_pb2.EvalTarget(name="teacher", base_url="http://127.0.0.1:8000/v1", chat=True),
            evaluation_pb2.EvalTarget(name="student", deployment="student"),
        ],  # fmt: skip
        dataset_uri=uri,
    )
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec)
    assert info.value.field == "spec.targets[1].chat"
    spec.targets[1].chat = True
    assert from_proto(spec).targets[1].chat


def test_a_chat_target_is_sent_the_conversation_and_a_plain_one_the_prompt():
    with StandinServer(lambda model, prompt: "5") as server:
        examples = _examples_of([BOTH])
        chat = TargetClient(
            TargetConfig(name="c", base_url=server.base_url, model="m", chat=True), _sampling()
        )
        plain = TargetClient(TargetConfig(name="p", base_url=server.base_url, model="m"), _sampling())
        assert chat.timed(examples[0]).text == "5" and plain.timed(examples[0]).text == "5"
        chat.timed(_examples_of([PLAIN])[0])
        bodies = [r["body"] for r in server.requests]
    assert bodies[0]["messages"] == BOTH["messages"][:2]  # the system turn too, exactly
    assert bodies[1]["prompt"] == "2+3=" and "messages" not in bodies[1]
    assert bodies[2]["messages"] == [{"role": "user", "content": "3+4="}]


def _examples_of(records):
    from slmops.core.datasets import Prompt
    from slmops.evaluation.examples import _example

    return [_example(Prompt(i, r)) for i, r in enumerate(records, start=1)]


def _sampling():
    from slmops.core.spec_checks import SamplingConfig

    return SamplingConfig(max_tokens=4)


def test_perplexity_renders_a_conversation_context_with_the_models_template(tmp_path):
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    items = [(CHAT["messages"][:2], "5"), ("3+4=", "7"), "text"]
    assert perplexity._rendered(tmp_path, items) == [
        ("<system>Answer with a number.<user>2+3=<a>", "5"),
        ("3+4=", "7"),
        "text",
    ]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert perplexity._rendered(plain, items[:1]) == [
        ("system: Answer with a number.\nuser: 2+3=\nassistant:", "5")
    ]
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ raise_exception('no') }}"})
    )
    with pytest.raises(ValueError, match="the chat template refused a conversation"):
        perplexity._rendered(tmp_path, items)
