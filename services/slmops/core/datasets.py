"""Dataset artifacts: one record schema and one reader for synthesis, training and evaluation.

A prompts file is JSONL: one object per line with a non-empty string
`prompt`; every other field (an `answer`, an `id`, ...) is kept.

A dataset folder holds `train.jsonl` and `validation.jsonl` (each record: the
prompt's fields, the teacher's `completion`, and `teacher` metadata, made by
`dataset_record`) and `stats.json`. Training may also read `{"text": str}`
records for full fine-tuning on plain text.

When the synthesis job asked for top-k log-probabilities, a record also holds
`top_logprobs` in the form `slmops.synthesis.logprobs` describes: `token_ids`,
`tokens`, `top_ids`, `top_tokens`, `top_logprobs`, one entry per generated
token. The ids are null when they cannot be known (an endpoint teacher without
a tokenizer, or a token that could not be mapped); when they are known,
`teacher.vocab_size` is the size of the teacher's vocabulary.
`top_logprobs_has_ids(record)` tells which.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import fsspec

from slmops.core.errors import InvalidSpec

TRAIN_FILE, VALIDATION_FILE, STATS_FILE = "train.jsonl", "validation.jsonl", "stats.json"
MAX_REPORTED = 20  # bad lines listed in one error; the rest are counted


class Prompt(NamedTuple):
    line: int  # 1-based line number in the prompts file
    fields: dict[str, Any]


def json_object_lines(
    lines: list[str], field: str, like: str = ""
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[str, str]]]:
    """(line number, object) for each non-blank JSONL line, and a problem naming each line that is
    not a JSON object (`like` shows what one looks like)."""
    rows: list[tuple[int, dict[str, Any]]] = []
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
            problems.append((field, f"line {number}: must be a JSON object{like}"))
        else:
            rows.append((number, value))
    return rows, problems


def parse_prompts(lines: list[str], field: str = "spec.prompts_uri") -> list[Prompt]:
    """Parse JSONL lines into prompts; one InvalidSpec names every bad line by its number."""
    prompts: list[Prompt] = []
    rows, problems = json_object_lines(lines, field, ' like {"prompt": "..."}')
    for number, value in rows:
        if not isinstance(value.get("prompt"), str) or not value["prompt"].strip():
            problems.append((field, f'line {number}: needs a non-empty string field "prompt"'))
        else:
            prompts.append(Prompt(number, value))
    problems.sort(key=lambda problem: int(problem[1].split(":", 1)[0].removeprefix("line ")))
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


def split_uri(dataset_uri: str, name: str) -> str:
    return dataset_uri.rstrip("/") + "/" + name


def split_exists(dataset_uri: str, name: str) -> bool:
    fs, path = fsspec.core.url_to_fs(split_uri(dataset_uri, name))
    return bool(fs.exists(path))


def read_records(
    dataset_uri: str, name: str, field_name: str = "spec.dataset_uri", allow_text: bool = False, limit: int = 0
) -> list[dict[str, Any]]:
    """The records of one split; InvalidSpec naming the file and line of any malformed one.

    With allow_text, a record may hold a `text` string instead of prompt and
    completion. With limit, only the first records are read (a quick look).
    """
    uri = split_uri(dataset_uri, name)
    records: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    with fsspec.open(uri, "r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append((field_name, f"{where} is not JSON ({exc.msg})"))
                continue
            if not isinstance(record, dict):
                problems.append((field_name, f"{where} is not a JSON object"))
                continue
            missing = [k for k in ("prompt", "completion") if not isinstance(record.get(k), str)]
            if allow_text and isinstance(record.get("text"), str):
                missing = []
            if missing:
                problems.append((field_name, f"{where} lacks string field(s) {', '.join(missing)}"))
                continue
            records.append(record)
            if len(problems) >= 10 or (limit and len(records) >= limit):
                break
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return records


def has_topk_ids(record: dict[str, Any]) -> bool:
    """Whether a record carries the teacher's top-k log-probabilities with token ids."""
    top = record.get("top_logprobs")
    return isinstance(top, dict) and top.get("token_ids") is not None and top.get("top_ids") is not None


def read_split(uri: str, split: str = "validation") -> list[dict[str, Any]]:
    """The records of one split of a dataset folder."""
    with fsspec.open(f"{uri.rstrip('/')}/{split}.jsonl", "r", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
