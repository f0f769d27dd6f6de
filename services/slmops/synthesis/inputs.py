"""The prompts a synthesis job reads: JSONL, Parquet or CSV, each row made into one prompt.

A row becomes a prompt through `prompt_template` (plain fields naming columns,
e.g. "Question: {question}\\nContext: {context}"; no format specs, conversions,
attributes or indexes) or, without a template, its `prompt` column. A row keeps
all its columns in its record (a reference answer, an id). Problems name the
row (JSONL and CSV: the line; Parquet: the row number) or, for a template, the
column it names that the file does not have.

The file is read row by row, never whole: a line longer than `MAX_LINE_CHARS`
and a prompt longer than `MAX_PROMPT_CHARS` (once its template is filled) are
bad rows, named like any other, and the job fails before the teacher is asked
anything. The spec check at Create (`check_prompts`) reads only the first
`CHECK_ROWS` rows.
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Iterator
from typing import Any

import fsspec

from slmops.core.datasets import MAX_REPORTED, Prompt
from slmops.core.errors import InvalidSpec

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
MAX_PROMPT_CHARS = 1_000_000  # a prompt (its template filled) longer than this is a bad row
MAX_LINE_CHARS = 8 * MAX_PROMPT_CHARS  # a JSONL or CSV line longer than this is a bad row
CHECK_ROWS = 1000  # rows the spec check reads at Create
CHECK_CHARS = 16 << 20  # ... and at most this many characters of the file
_PARQUET_BATCH = 1024
_SKIP_CHUNK = 1 << 20
Problem = tuple[str, str]


def input_format(uri: str) -> str:
    for suffix, kind in FORMATS.items():
        if uri.lower().endswith(suffix):
            return kind
    return "jsonl"


def template_problem(template: str) -> str | None:
    """Why a template is not one (None when it is): only plain fields like {column} are allowed."""
    if len(template) > MAX_PROMPT_CHARS:
        return f"is {len(template)} characters; a prompt may have at most {MAX_PROMPT_CHARS}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a valid template ({exc})"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name:
            return "names its columns as {column}; positional {} is not allowed"
        if spec or conversion or not name.isidentifier():
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            return (f"allows only plain fields like {{column}}: {{{shown}}} has a format spec, conversion, "
                    "attribute or index")  # fmt: skip
    return None


def template_columns(template: str) -> list[str]:
    """The columns a template names, in order; InvalidSpec when it is not a valid template."""
    problem = template_problem(template)
    if problem:
        raise InvalidSpec("spec.prompt_template", problem)
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name))


def read_inputs(uri: str, template: str = "", field: str = "spec.prompts_uri") -> list[Prompt]:
    """Every row of the prompts file as a Prompt whose fields hold the row and its `prompt`."""
    prompts: list[Prompt] = []
    problems: list[Problem] = []
    more = 0
    for item in _prompts(uri, template, field):
        if isinstance(item, Prompt):
            prompts.append(item)
        elif len(problems) < MAX_REPORTED:
            problems.append(item)
        else:
            more += 1
    if more:
        problems.append((field, f"... and {more} more bad lines"))
    if not problems and not prompts:
        problems.append((field, "holds no prompts"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return prompts


def check_prompts(uri: str, template: str = "", field: str = "spec.prompts_uri") -> dict[str, Any] | None:
    """The spec check: the first rows of the file (never all of it) read as the job will read them.

    Returns the first prompt's fields (None when the rows checked hold none);
    InvalidSpec names every bad row among them. A template that is not valid is
    left to the spec's own check (config.py), and the rows are not read.
    """
    if template and template_problem(template):
        return None
    first: dict[str, Any] | None = None
    problems: list[Problem] = []
    rows = 0
    for item in _prompts(uri, template, field, budget=CHECK_CHARS):
        rows += 1
        if isinstance(item, Prompt):
            first = item.fields if first is None else first
        elif len(problems) < MAX_REPORTED:
            problems.append(item)
        if rows >= CHECK_ROWS:
            break
    if not rows:
        problems.append((field, "holds no prompts"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return first


def _prompts(uri: str, template: str, field: str, budget: int | None = None) -> Iterator[Prompt | Problem]:
    """Each row as a Prompt, or a (field, problem) naming it, in file order."""
    kind = input_format(uri)
    where = "row" if kind == "parquet" else "line"
    columns = template_columns(template) if template else []
    parts = (
        [(literal, name) for literal, name, _, _ in string.Formatter().parse(template)] if template else []
    )
    like = "" if template or kind != "jsonl" else ' like {"prompt": "..."}'
    checked = False
    for number, row in _rows(uri, kind, field, budget, like):
        if isinstance(row, str):
            yield field, f"{where} {number}: {row}"
            continue
        if columns and not checked:
            missing = [c for c in columns if c not in row]
            if missing:
                raise InvalidSpec("spec.prompt_template", f"names column {missing[0]!r}, which {field} does not "
                                  f"have (its columns: {', '.join(sorted(row))})")  # fmt: skip
            checked = True
        absent = [c for c in columns if row.get(c) is None]
        if absent:
            yield field, f"{where} {number}: has no {absent[0]!r}"
            continue
        if template:
            values = {c: str(row[c]) for c in columns}
            size = sum(len(literal) + (len(values[name]) if name else 0) for literal, name in parts)
            if size > MAX_PROMPT_CHARS:
                yield field, f"{where} {number}: {_too_long(size)}"
                continue
            text = "".join(literal + (values[name] if name else "") for literal, name in parts)
        else:
            text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            yield field, f'{where} {number}: needs a non-empty string field "prompt"'
        elif len(text) > MAX_PROMPT_CHARS:
            yield field, f"{where} {number}: {_too_long(len(text))}"
        else:
            yield Prompt(number, {**row, "prompt": text})


def _too_long(size: int) -> str:
    return f"its prompt is {size} characters; a prompt may have at most {MAX_PROMPT_CHARS}"


def _rows(uri: str, kind: str, field: str, budget: int | None, like: str) -> Iterator[tuple[int, Any]]:
    """(line or row number, row or the problem with it as text); values made JSON-safe."""
    if kind == "parquet":
        yield from _parquet_rows(uri, field)
        return
    try:
        with fsspec.open(uri, "r", encoding="utf-8", newline="") as fh:
            lines = _lines(fh, budget)
            if kind == "csv":
                yield from _csv_rows(lines)
                return
            for number, line in lines:
                if line is None:
                    yield number, f"is longer than {MAX_LINE_CHARS} characters"
                elif line.strip():
                    yield number, _json_row(line, like)
    except UnicodeDecodeError:
        raise InvalidSpec(field, "is not UTF-8 text") from None


def _lines(fh: Any, budget: int | None) -> Iterator[tuple[int, str | None]]:
    """(number, line) read one at a time; None for a line past MAX_LINE_CHARS (the rest of it skipped).

    Stops once `budget` characters were read (None: at the end of the file).
    """
    number, spent = 0, 0
    while budget is None or spent < budget:
        line = fh.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        number += 1
        spent += len(line)
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            if budget is not None:  # the check stops here rather than read on through one line
                yield number, None
                return
            while line and not line.endswith("\n"):
                line = fh.readline(_SKIP_CHUNK)
            yield number, None
            continue
        yield number, line


def _json_row(line: str, like: str) -> dict[str, Any] | str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    return value if isinstance(value, dict) else f"must be a JSON object{like}"


class _LineTooLong(Exception):
    def __init__(self, number: int):
        self.number = number


def _csv_rows(lines: Iterator[tuple[int, str | None]]) -> Iterator[tuple[int, Any]]:
    def text() -> Iterator[str]:
        for number, line in lines:
            if line is None:
                raise _LineTooLong(number)
            yield line

    reader = csv.DictReader(text())
    try:
        for row in reader:
            yield reader.line_num, _plain(row)
    except _LineTooLong as exc:
        yield exc.number, f"is longer than {MAX_LINE_CHARS} characters"
    except csv.Error as exc:
        yield reader.line_num, f"is not valid CSV ({exc})"


def _parquet_rows(uri: str, field: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    number = 0
    try:
        with fsspec.open(uri, "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=_PARQUET_BATCH):
                for row in batch.to_pylist():
                    number += 1
                    yield number, _plain(row)
    except InvalidSpec:
        raise
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        raise InvalidSpec(field, f"is not a Parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(row, default=str))
