"""Dataset reading and tokenization: text is prompt + completion + EOS, loss only on the completion."""

from __future__ import annotations

import json

import pytest

from slmops.core.errors import InvalidSpec
from slmops.testing.tiny import train_tokenizer
from slmops.training import data


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    corpus = ["12+34=46", "The answer is: yes.", "0123456789 +=\n"]
    folder = train_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=258)
    return AutoTokenizer.from_pretrained(folder)


def test_labels_cover_only_completion_and_eos(tokenizer):
    example, truncated = data.tokenize_record(tokenizer, "12+34=", "46", max_seq_length=32)
    prompt_ids = tokenizer("12+34=", add_special_tokens=False)["input_ids"]
    assert not truncated
    assert len(example.input_ids) == len(example.labels) == len(prompt_ids) + 3
    assert example.labels[: len(prompt_ids)] == [data.IGNORE_INDEX] * len(prompt_ids)
    assert example.labels[len(prompt_ids) :] == example.input_ids[len(prompt_ids) :]
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids) == "12+34=46" + tokenizer.eos_token
    # The prompt's tokens are exactly those a server sees for that prompt.
    assert example.input_ids[: len(prompt_ids)] == prompt_ids


def test_long_completion_is_truncated_and_long_prompt_dropped(tokenizer):
    example, truncated = data.tokenize_record(tokenizer, "12+34=", "4646464646", max_seq_length=8)
    assert truncated and len(example.input_ids) == 8
    assert example.labels.count(data.IGNORE_INDEX) == 6
    assert example.input_ids[-1] != tokenizer.eos_token_id
    dropped, _ = data.tokenize_record(tokenizer, "12+34=", "46", max_seq_length=6)
    assert dropped is None

    split = data.tokenize_records(
        tokenizer,
        [
            {"prompt": "1+1=", "completion": "2"},
            {"prompt": "12+34=", "completion": "4646"},
            {"prompt": "123456789=", "completion": "1"},
        ],
        max_seq_length=8,
    )
    assert (len(split.examples), split.truncated, split.dropped) == (2, 1, 1)


def test_read_records_reports_each_bad_line(tmp_path):
    lines = [
        json.dumps({"prompt": "1+1=", "completion": "2", "teacher": "x"}),
        "",
        "{not json",
        json.dumps({"prompt": "2+2="}),
        json.dumps(["a"]),
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidSpec) as info:
        data.read_records(tmp_path.as_uri(), data.TRAIN_FILE)
    problems = info.value.problems
    assert [f for f, _ in problems] == ["spec.dataset_uri"] * 3
    assert "line 3" in problems[0][1] and "line 4" in problems[1][1] and "completion" in problems[1][1]
    assert "line 5" in problems[2][1]

    (tmp_path / "train.jsonl").write_text(lines[0] + "\n")
    assert data.read_records(tmp_path.as_uri(), data.TRAIN_FILE)[0]["teacher"] == "x"
    assert data.split_exists(tmp_path.as_uri(), data.TRAIN_FILE)
    assert not data.split_exists(tmp_path.as_uri(), data.VALIDATION_FILE)


def test_collate_pads_right_and_masks_padding(tokenizer):
    examples = [data.Example([1, 2, 3], [-100, 2, 3]), data.Example([4, 5], [-100, 5])]
    batch = data.collate(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
