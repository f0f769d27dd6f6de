"""Prompt reading (bad lines by number), the deterministic split, and the dataset folder."""

from __future__ import annotations

import json

import pytest

from slmops.core.datasets import dataset_record, parse_prompts, read_prompts, read_split, top_logprobs_has_ids
from slmops.core.errors import InvalidSpec
from slmops.synthesis.dataset import split_indices, write_dataset


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
