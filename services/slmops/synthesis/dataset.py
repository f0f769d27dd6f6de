"""Prompts in, dataset folder out.

The prompts file is JSONL: one object per line with a non-empty string
`prompt`; every other field (an `answer`, an `id`, ...) is kept. A dataset
folder holds `train.jsonl` and `validation.jsonl` (each record: the prompt's
fields, the teacher's `completion`, and `teacher` metadata) and `stats.json`.
The split is seeded and deterministic.

When the job asked for top-k log-probabilities, a record also holds
`top_logprobs` in the form `slmops.synthesis.logprobs` describes:
`token_ids`, `tokens`, `top_ids`, `top_tokens`, `top_logprobs`, one entry per
generated token. The ids are null when they cannot be known (an endpoint
teacher without a tokenizer, or a token that could not be mapped); when they
are known, `teacher.vocab_size` is the size of the teacher's vocabulary.
`top_logprobs_has_ids(record)` tells which.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, NamedTuple

import fsspec

from slmops.core.errors import InvalidSpec

TRAIN, VALIDATION, STATS = "train.jsonl", "validation.jsonl", "stats.json"
MAX_REPORTED = 20  # bad lines listed in one error; the rest are counted


class Prompt(NamedTuple):
    line: int  # 1-based line number in the prompts file
    fields: dict[str, Any]


def parse_prompts(lines: list[str], field: str = "spec.prompts_uri") -> list[Prompt]:
    """Parse JSONL lines into prompts; one InvalidSpec names every bad line by its number."""
    prompts: list[Prompt] = []
    problems: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(
                (field, f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            )
            continue
        if not isinstance(value, dict):
            problems.append(
                (field, f'line {number}: must be a JSON object like {{"prompt": "..."}}')
            )
        elif not isinstance(value.get("prompt"), str) or not value["prompt"].strip():
            problems.append((field, f'line {number}: needs a non-empty string field "prompt"'))
        else:
            prompts.append(Prompt(number, value))
    if len(problems) > MAX_REPORTED:
        more = len(problems) - MAX_REPORTED
        problems = problems[:MAX_REPORTED] + [(field, f"... and {more} more bad lines")]
    if not problems and not prompts:
        problems.append((field, "holds no prompts"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return prompts


def read_prompts(uri: str, field: str = "spec.prompts_uri") -> list[Prompt]:
    """Read and validate the prompts JSONL file at uri (any fsspec URI)."""
    try:
        with fsspec.open(uri, "r", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError:
        raise InvalidSpec(field, "is not UTF-8 text") from None
    return parse_prompts(lines, field)


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, validation) index lists, each in file order.

    With two or more items, each split gets at least one.
    """
    n_val = round(n * validation_fraction)
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def dataset_record(
    fields: dict[str, Any], result: dict[str, Any], teacher_model: str
) -> dict[str, Any]:
    """A prompt's fields plus the teacher's answer and metadata."""
    record = dict(fields)
    record["completion"] = result["completion"]
    record["teacher"] = {
        "model": teacher_model,
        "finish_reason": result.get("finish_reason", ""),
        "completion_tokens": int(result.get("completion_tokens", 0)),
    }
    top = result.get("top_logprobs")
    if top is not None:
        record["top_logprobs"] = top
        if top.get("token_ids") is not None and result.get("vocab_size"):
            record["teacher"]["vocab_size"] = int(result["vocab_size"])
    return record


def top_logprobs_has_ids(record: dict[str, Any]) -> bool:
    """True when the record's top-k log-probabilities carry token ids (and teacher.vocab_size)."""
    top = record.get("top_logprobs")
    return (
        isinstance(top, dict)
        and top.get("token_ids") is not None
        and top.get("top_ids") is not None
        and "vocab_size" in record.get("teacher", {})
    )


def dataset_stats(
    records: list[dict[str, Any]], train: list[int], validation: list[int]
) -> dict[str, Any]:
    tokens = [r["teacher"]["completion_tokens"] for r in records]
    return {
        "num_train": len(train),
        "num_validation": len(validation),
        "completion_tokens": sum(tokens),
        "mean_completion_tokens": (sum(tokens) / len(tokens)) if tokens else 0.0,
        "finish_reasons": dict(Counter(r["teacher"]["finish_reason"] for r in records)),
    }


def _write_jsonl(fs: fsspec.AbstractFileSystem, path: str, records: list[dict[str, Any]]) -> None:
    with fs.open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_dataset(
    uri: str,
    records: list[dict[str, Any]],
    *,
    validation_fraction: float,
    seed: int,
    extra_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Split records and write train.jsonl, validation.jsonl and stats.json under uri; return the stats."""
    train, validation = split_indices(len(records), validation_fraction, seed)
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    _write_jsonl(fs, f"{root}/{TRAIN}", [records[i] for i in train])
    _write_jsonl(fs, f"{root}/{VALIDATION}", [records[i] for i in validation])
    stats = {
        **dataset_stats(records, train, validation),
        "seed": seed,
        "validation_fraction": validation_fraction,
        **(extra_stats or {}),
    }
    with fs.open(f"{root}/{STATS}", "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
    return stats


def read_split(uri: str, split: str = "validation") -> list[dict[str, Any]]:
    """The records of one split of a dataset folder."""
    with fsspec.open(f"{uri.rstrip('/')}/{split}.jsonl", "r", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
