"""The prompts a synthesis job reads: JSONL, Parquet or CSV, each row made into one prompt.

A row becomes a prompt through `prompt_template` (format fields naming columns,
e.g. "Question: {question}\\nContext: {context}") or, without a template, its
`prompt` column. A row keeps all its columns in its record (a reference answer,
an id). Problems name the row (JSONL and CSV: the line; Parquet: the row
number) or, for a template, the column it names that the file does not have.
"""

from __future__ import annotations

import csv
import io
import json
import string
from typing import Any

import fsspec

from slmops.core.datasets import MAX_REPORTED, Prompt, json_object_lines, read_prompts
from slmops.core.errors import InvalidSpec

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}


def input_format(uri: str) -> str:
    for suffix, kind in FORMATS.items():
        if uri.lower().endswith(suffix):
            return kind
    return "jsonl"


def template_columns(template: str) -> list[str]:
    """The columns a template names, in order; InvalidSpec when it is not a valid template."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InvalidSpec("spec.prompt_template", f"is not a valid template ({exc})") from None
    if any(not name or not name.isidentifier() for name in names):
        raise InvalidSpec(
            "spec.prompt_template", "names its columns as {column}; positional {} is not allowed"
        )
    return list(dict.fromkeys(names))


def read_inputs(uri: str, template: str = "", field: str = "spec.prompts_uri") -> list[Prompt]:
    """Every row of the prompts file as a Prompt whose fields hold the row and its `prompt`."""
    kind = input_format(uri)
    if kind == "jsonl" and not template:
        return read_prompts(uri, field)
    columns = template_columns(template) if template else []
    rows = _rows(uri, kind, field)
    if not rows:
        raise InvalidSpec(field, "holds no prompts")
    available = sorted(rows[0][1])
    missing = [c for c in columns if c not in rows[0][1]]
    if missing:
        raise InvalidSpec("spec.prompt_template", f"names column {missing[0]!r}, which {field} does not have "
                                                  f"(its columns: {', '.join(available)})")  # fmt: skip
    where = "row" if kind == "parquet" else "line"
    prompts, problems = [], []
    for number, row in rows:
        if template:
            absent = [c for c in columns if row.get(c) is None]
            text = "" if absent else template.format_map(row)
        else:
            text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            why = f"has no {absent[0]!r}" if template and absent else 'needs a non-empty "prompt"'
            problems.append((field, f"{where} {number}: {why}"))
            continue
        prompts.append(Prompt(number, {**row, "prompt": text}))
    if problems:
        if len(problems) > MAX_REPORTED:
            problems = problems[:MAX_REPORTED] + [(field, f"... and {len(problems) - MAX_REPORTED} more")]
        raise InvalidSpec(*problems[0], *problems[1:])
    return prompts


def _rows(uri: str, kind: str, field: str) -> list[tuple[int, dict[str, Any]]]:
    """(line or row number, row) for every row; values made JSON-safe (dates become text)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            with fsspec.open(uri, "rb") as fh:
                table = pq.read_table(fh)
        except Exception as exc:  # pyarrow's errors have no common base worth naming
            raise InvalidSpec(field, f"is not a Parquet file ({type(exc).__name__}: {exc})") from None
        return [(i, _plain(row)) for i, row in enumerate(table.to_pylist(), start=1)]
    try:
        with fsspec.open(uri, "r", encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise InvalidSpec(field, "is not UTF-8 text") from None
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text))
        return [(reader.line_num, _plain(row)) for row in reader]
    rows, problems = json_object_lines(text.splitlines(), field)
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:MAX_REPORTED])
    return rows


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(row, default=str))
