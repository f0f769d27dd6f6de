"""Dataset artifacts: one record schema and one reader for synthesis, training and evaluation.

A prompts file is JSONL: one object per line with a non-empty string
`prompt`; every other field (an `answer`, an `id`, ...) is kept.

A dataset folder holds two splits, `train` and `validation` (each record: the
prompt's fields, the teacher's `completion`, and `teacher` metadata, made by
`dataset_record`) and `stats.json`. A split is either one JSONL file
(`train.jsonl`, one record per line: what a person writes by hand) or Parquet
shards under `data/` (`data/train-00000-of-00002.parquet`, ...: what synthesis
writes, beside a `preview.jsonl` of the first records to read at a glance).
Readers take either; the splits are still named by their JSONL names
(`TRAIN_FILE`). In Parquet, every record field is a column; a field whose
values Arrow cannot hold in one type is stored as JSON text and named in the
file's `slmops.json_columns` metadata. Training may also read `{"text": str}`
records for full fine-tuning on plain text.

A record may instead be a conversation: `{"messages": [{"role", "content"}, ...]}`
(an optional system turn, one or more user and assistant turns, the last turn
the assistant's answer). Synthesis with a chat teacher writes one in every
record, [system (if a system prompt), user (the prompt), assistant (the
answer)] (`chat_messages`), beside the `prompt` and `completion` that plain
readers use; a person may write messages-only records by hand. Training renders
`messages` with the student's chat template, evaluation sends the turns before
the answer to a chat target's `/chat/completions` (`conversation`). Readers
check a record's messages (`record_problem`) and name a bad one by its line
and field (`train.jsonl line 3 messages[1].role: must be one of ...`). In
Parquet, `messages` is a list of structs, one field per key any turn has.

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
from collections.abc import Iterator
from typing import Any, NamedTuple

import fsspec

from slmops.core.chat_template import check_messages
from slmops.core.errors import InvalidSpec

TRAIN_FILE, VALIDATION_FILE, STATS_FILE = "train.jsonl", "validation.jsonl", "stats.json"
MAX_REPORTED = 20  # bad lines listed in one error; the rest are counted
DATA_DIR, PREVIEW_FILE = "data", "preview.jsonl"
JSON_COLUMNS_KEY = b"slmops.json_columns"


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
            problems.append((field, f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            problems.append((field, f"line {number}: must be a JSON object{like}"))
        else:
            rows.append((number, value))
    return rows, problems


def parse_prompts(
    lines: list[str], field: str = "spec.prompts_uri", allow_messages: bool = False
) -> list[Prompt]:
    """Parse JSONL lines into prompts; one InvalidSpec names every bad line by its number.

    With allow_messages, a line may hold a conversation (`messages`, checked by
    `messages_problem`) instead of a prompt.
    """
    prompts: list[Prompt] = []
    rows, problems = json_object_lines(lines, field, ' like {"prompt": "..."}')
    for number, value in rows:
        if allow_messages and "messages" in value:
            if problem := messages_problem(value["messages"]):
                problems.append((field, f"line {number}: {problem}"))
            else:
                prompts.append(Prompt(number, value))
        elif not isinstance(value.get("prompt"), str) or not value["prompt"].strip():
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


def chat_messages(prompt: str, system_prompt: str = "") -> list[dict[str, str]]:
    """The turns a chat teacher is asked: the system prompt (when there is one), then the prompt."""
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*turns, {"role": "user", "content": prompt}]


def dataset_record(
    fields: dict[str, Any],
    result: dict[str, Any],
    teacher_model: str,
    *,
    chat: bool = False,
    system_prompt: str = "",
) -> dict[str, Any]:
    """A prompt's fields plus the teacher's answer and metadata; with chat, also the conversation the
    teacher answered as `messages` (`chat_messages` and the answer's assistant turn). A `messages`
    field of the prompts file is not kept: a record's messages are the conversation answered."""
    record = {k: v for k, v in fields.items() if k != "messages"}  # messages: only the one asked
    record["completion"] = result["completion"]
    if chat:
        answer = {"role": "assistant", "content": result["completion"]}
        record["messages"] = [*chat_messages(fields["prompt"], system_prompt), answer]
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


def shard_uris(dataset_uri: str, name: str) -> list[str]:
    """The Parquet shards of split `name` (train.jsonl or train), in order; [] when it has none."""
    split = name.removesuffix(".jsonl")
    fs, root = fsspec.core.url_to_fs(dataset_uri)
    found = sorted(fs.glob(f"{root.rstrip('/')}/{DATA_DIR}/{split}-*.parquet"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [path if protocol == "file" else f"{protocol}://{path}" for path in found]


def split_exists(dataset_uri: str, name: str) -> bool:
    fs, path = fsspec.core.url_to_fs(split_uri(dataset_uri, name))
    return bool(fs.exists(path)) or bool(shard_uris(dataset_uri, name))


def to_arrow(records: list[dict[str, Any]]) -> Any:
    """An Arrow table of records: one column per field (JSON text where one type cannot hold it)."""
    import pyarrow as pa

    keys: dict[str, None] = {"prompt": None, "completion": None}
    for record in records:
        keys.update(dict.fromkeys(record))
    columns: dict[str, Any] = {}
    as_json: list[str] = []
    for key in keys:
        values = [record.get(key) for record in records]
        try:
            columns[key] = pa.array(values, type=None if records else pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            columns[key] = pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
            as_json.append(key)
    table = pa.table(columns)
    return table.replace_schema_metadata({JSON_COLUMNS_KEY: json.dumps(as_json).encode()})


def from_arrow(table: Any) -> list[dict[str, Any]]:
    """Records back from `to_arrow`'s table: JSON columns decoded, absent fields (null) left out."""
    as_json = json.loads((table.schema.metadata or {}).get(JSON_COLUMNS_KEY, b"[]"))
    records = []
    for row in table.to_pylist():
        record = {
            k: (json.loads(v) if k in as_json and v is not None else v)
            for k, v in row.items()
            if v is not None
        }
        if isinstance(record.get("teacher"), dict):
            record["teacher"] = {k: v for k, v in record["teacher"].items() if v is not None}
        if isinstance(record.get("messages"), list):  # one struct type holds every turn's keys
            record["messages"] = [
                {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
                for m in record["messages"]
            ]
        records.append(record)
    return records


def _split_rows(dataset_uri: str, name: str) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a split: a JSONL line's text, or a Parquet row's record."""
    uri = split_uri(dataset_uri, name)
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        with fsspec.open(uri, "r", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    yield f"{name} line {number}", line
        return
    import pyarrow.parquet as pq

    for shard in shard_uris(dataset_uri, name):
        with fsspec.open(shard, "rb") as fh:
            table = pq.read_table(fh)
        short = shard.rsplit("/", 2)
        for number, record in enumerate(from_arrow(table), start=1):
            yield f"{'/'.join(short[-2:])} row {number}", record


def read_records(
    dataset_uri: str,
    name: str,
    field_name: str = "spec.dataset_uri",
    allow_text: bool = False,
    limit: int = 0,
) -> list[dict[str, Any]]:
    """The records of one split (JSONL or Parquet shards); InvalidSpec naming the file and line
    (or row) of any malformed one.

    A record holds prompt and completion, or a conversation in `messages`
    (`record_problem`); with allow_text, it may hold a `text` string instead.
    With limit, only the first records are read (a quick look).
    """
    records: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for where, row in _split_rows(dataset_uri, name):
        record = row
        if isinstance(row, str):
            try:
                record = json.loads(row)
            except json.JSONDecodeError as exc:
                problems.append((field_name, f"{where} is not JSON ({exc.msg})"))
                continue
        if not isinstance(record, dict):
            problems.append((field_name, f"{where} is not a JSON object"))
            continue
        problem = record_problem(record, allow_text)
        if problem:
            problems.append((field_name, f"{where} {problem}"))
            continue
        records.append(record)
        if len(problems) >= 10 or (limit and len(records) >= limit):
            break
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return records


def messages_problem(messages: Any) -> str | None:
    """Why a record's `messages` is not a conversation ending with the assistant's answer (None when it
    is), naming the bad field: `messages[1].role: must be one of ...`."""
    try:
        turns = check_messages(messages)
    except InvalidSpec as exc:
        return f"{exc.field}: {exc.problems[0][1]}"
    if turns[-1]["role"] != "assistant":
        return f"messages[{len(turns) - 1}].role: the last turn must be the assistant's answer"
    if len(turns) < 2:
        return "messages: needs at least one turn before the assistant's answer"
    return None


def record_problem(record: dict[str, Any], allow_text: bool = False) -> str | None:
    """Why a dataset record is not one (None when it is): a record with `messages` must hold a
    conversation (whatever else it has); any other needs string prompt and completion (or, with
    allow_text, a string text)."""
    if "messages" in record:
        return messages_problem(record["messages"])
    if allow_text and isinstance(record.get("text"), str):
        return None
    missing = [k for k in ("prompt", "completion") if not isinstance(record.get(k), str)]
    return f"lacks string field(s) {', '.join(missing)}" if missing else None


def has_topk_ids(record: dict[str, Any]) -> bool:
    """Whether a record carries the teacher's top-k log-probabilities with token ids."""
    top = record.get("top_logprobs")
    return isinstance(top, dict) and top.get("token_ids") is not None and top.get("top_ids") is not None


def read_split(uri: str, split: str = "validation") -> list[dict[str, Any]]:
    """The records of one split of a dataset folder (JSONL or Parquet shards), unchecked."""
    return [json.loads(row) if isinstance(row, str) else row for _, row in _split_rows(uri, f"{split}.jsonl")]


def conversation(record: dict[str, Any]) -> tuple[list[dict[str, str]], str] | None:
    """(the turns before the answer, the answer) of a `messages` record; None for any other record.

    A chat record is `{"messages": [{"role", "content"}, ...]}` whose last turn is the
    assistant's answer (what synthesis with a chat teacher writes); the turns before it
    are what a chat client sends to `/chat/completions`.
    """
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    try:
        *turns, last = check_messages(messages)  # {role, content} with text content
    except InvalidSpec:
        return None
    if last["role"] != "assistant":
        return None
    return turns, last["content"]
