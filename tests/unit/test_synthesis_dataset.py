"""Prompt reading (bad lines by number), the deterministic and stratified splits, and the dataset
folder (Parquet shards, preview, stats)."""

from __future__ import annotations

import json

import pytest

from slmops.core.datasets import (
    TRAIN_FILE,
    VALIDATION_FILE,
    dataset_record,
    parse_prompts,
    read_prompts,
    read_records,
    read_split,
    split_exists,
    top_logprobs_has_ids,
)
from slmops.core.errors import InvalidSpec
from slmops.synthesis.dataset import split_indices, stratified_indices, write_dataset


def test_prompts_keep_extra_fields_and_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2", "id": 7}\n\n{"prompt": "2+2="}\n')
    prompts = read_prompts(str(path))
    assert [(p.line, p.fields) for p in prompts] == [
        (1, {"prompt": "1+1=", "answer": "2", "id": 7}),
        (3, {"prompt": "2+2="}),
    ]


def test_every_bad_line_is_named():
    lines = [
        '{"prompt": "fine"}',
        "{broken",
        '"just a string"',
        '{"text": "no prompt"}',
        '{"prompt": 3}',
    ]
    with pytest.raises(InvalidSpec) as info:
        parse_prompts(lines, "spec.prompts_uri")
    problems = [p for _, p in info.value.problems]
    assert problems[0].startswith("line 2: not valid JSON")
    assert problems[1].startswith("line 3: must be a JSON object")
    assert problems[2].startswith("line 4: needs a non-empty string field")
    assert problems[3].startswith("line 5: needs a non-empty string field")


def test_many_bad_lines_are_counted_and_an_empty_file_is_refused():
    with pytest.raises(InvalidSpec) as info:
        parse_prompts(["x"] * 30)
    assert len(info.value.problems) == 21 and "10 more bad lines" in info.value.problems[-1][1]
    with pytest.raises(InvalidSpec, match="holds no prompts"):
        parse_prompts(["", "  "])


def test_split_is_deterministic_and_complete():
    train, validation = split_indices(100, 0.2, seed=3)
    assert (train, validation) == split_indices(100, 0.2, seed=3)
    assert len(validation) == 20 and sorted(train + validation) == list(range(100))
    assert train == sorted(train) and validation == sorted(validation)
    assert split_indices(100, 0.2, seed=4)[1] != validation
    assert split_indices(1, 0.5, 0) == ([0], [])
    assert split_indices(2, 0.01, 0)[1] != [] and split_indices(3, 0.9, 0)[0] != []


def _top(answer: str, ids: bool) -> dict:
    return {
        "token_ids": [ord(answer)] if ids else None,
        "tokens": [answer],
        "top_ids": [[ord(answer), 48]] if ids else None,
        "top_tokens": [[answer, "0"]],
        "top_logprobs": [[-0.1, -3.0]],
    }


def test_dataset_folder(tmp_path):
    fields = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(10)]
    records = [
        dataset_record(
            f,
            {
                "completion": f["answer"],
                "finish_reason": "stop",
                "completion_tokens": 1,
                "top_logprobs": _top(f["answer"][0], ids=i % 4 == 1) if i % 2 else None,
                **({"vocab_size": 300} if i % 2 else {}),
            },
            "big-teacher",
        )
        for i, f in enumerate(fields)
    ]
    assert records[1]["top_logprobs"] == _top("2", ids=True) and "top_logprobs" not in records[0]
    assert records[3]["top_logprobs"] == _top("4", ids=False)
    assert records[0]["teacher"] == {
        "model": "big-teacher",
        "finish_reason": "stop",
        "completion_tokens": 1,
    }
    # vocab_size goes with known ids only (record 3 has none though its teacher told one).
    assert records[1]["teacher"]["vocab_size"] == 300 and "vocab_size" not in records[3]["teacher"]
    assert [top_logprobs_has_ids(r) for r in records[:4]] == [False, True, False, False]

    uri = f"file://{tmp_path}/ds"
    stats = write_dataset(uri, records, validation_fraction=0.3, seed=1, extra_stats={"failed": 0})
    train, validation = read_split(uri, "train"), read_split(uri)
    assert len(train) == 7 and len(validation) == 3
    assert sorted(r["prompt"] for r in train + validation) == sorted(f["prompt"] for f in fields)
    on_disk = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert on_disk == stats
    assert stats["num_train"] == 7 and stats["completion_tokens"] == 10 and stats["failed"] == 0
    assert stats["finish_reasons"] == {"stop": 10}
    # Same seed, same split.
    write_dataset(f"file://{tmp_path}/ds2", records, validation_fraction=0.3, seed=1)
    assert read_split(f"file://{tmp_path}/ds2") == validation


def _record(i: int, **fields) -> dict:
    return dataset_record({"prompt": f"q{i}", **fields}, {"completion": f"a{i}", "finish_reason": "stop",
                                                          "completion_tokens": 2}, "teacher")  # fmt: skip


def test_splits_are_parquet_shards_with_a_preview_and_read_back_as_written(tmp_path):
    # Fields of mixed types (an int here, a string there) are kept as JSON text and come back as written.
    records = [_record(i, answer=i if i % 2 else str(i), tags=["x"] * (i % 3)) for i in range(25)]
    uri = f"file://{tmp_path}/ds"
    stats = write_dataset(uri, records, validation_fraction=0.2, seed=0, rows_per_shard=8)
    assert stats["shards"]["train"] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert stats["shards"]["validation"] == ["data/validation-00000-of-00001.parquet"]
    assert not (tmp_path / "ds" / "train.jsonl").exists()
    back = read_split(uri, "train") + read_split(uri, "validation")
    assert sorted(back, key=lambda r: r["prompt"]) == sorted(records, key=lambda r: r["prompt"])
    # The readers of training and evaluation see the split and check its rows.
    assert split_exists(uri, TRAIN_FILE) and split_exists(uri, VALIDATION_FILE)
    assert len(read_records(uri, TRAIN_FILE)) == 20
    preview = [json.loads(line) for line in (tmp_path / "ds" / "preview.jsonl").read_text().splitlines()]
    assert preview == read_split(uri, "train")  # fewer records than a preview holds: all of train

    import pyarrow.parquet as pq  # any Parquet reader sees real columns

    table = pq.read_table(tmp_path / "ds" / "data" / "train-00000-of-00003.parquet")
    assert table.num_rows == 8 and {"prompt", "completion", "teacher"} <= set(table.column_names)


def test_a_row_without_a_completion_is_named_by_its_shard_and_row(tmp_path):
    import pyarrow.parquet as pq

    from slmops.core.datasets import to_arrow

    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(
        to_arrow([_record(0), {"prompt": "q1"}]), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet"
    )
    uri = f"file://{tmp_path}/ds"
    with pytest.raises(InvalidSpec, match=r"data/train-00000-of-00001.parquet row 2 lacks string field"):
        read_records(uri, TRAIN_FILE)


def test_a_named_label_keeps_its_share_in_both_splits(tmp_path):
    labels = ["billing"] * 60 + ["shipping"] * 30 + ["returns"] * 10
    records = [_record(i, intent=label) for i, label in enumerate(labels)]
    uri = f"file://{tmp_path}/ds"
    stats = write_dataset(uri, records, validation_fraction=0.2, seed=3, label_column="intent")
    assert stats["labels"]["validation"] == {"billing": 12, "shipping": 6, "returns": 2}
    assert stats["labels"]["train"] == {"billing": 48, "shipping": 24, "returns": 8}
    # Deterministic, complete and disjoint; with one record a label stays in train.
    train, validation = stratified_indices(labels, 0.2, seed=3)
    assert (train, validation) == stratified_indices(labels, 0.2, seed=3)
    assert sorted(train + validation) == list(range(100))
    train, validation = stratified_indices(["a"] * 9 + ["b"], 0.3, seed=0)
    assert len(validation) == 3 and 9 not in validation
