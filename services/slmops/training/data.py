"""Dataset artifacts for supervised training: read JSONL records and tokenize them.

A dataset folder holds `train.jsonl` and (optionally) `validation.jsonl`, one
record per line: `{"prompt": str, "completion": str, ...}`. Each record becomes
the token sequence of `prompt + completion + eos` with no chat template, the
way the predictor serves plain completions; the loss covers only the completion
and the final EOS token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import fsspec

from slmops.core.errors import InvalidSpec

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
IGNORE_INDEX = -100  # label value the loss skips


@dataclass
class Example:
    """One tokenized record: inputs and labels of equal length."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenizedSplit:
    examples: list[Example] = field(default_factory=list)
    dropped: int = 0  # records whose prompt left no room for the completion
    truncated: int = 0  # records whose completion was cut at max_seq_length


def split_uri(dataset_uri: str, name: str) -> str:
    return dataset_uri.rstrip("/") + "/" + name


def split_exists(dataset_uri: str, name: str) -> bool:
    fs, path = fsspec.core.url_to_fs(split_uri(dataset_uri, name))
    return bool(fs.exists(path))


def read_records(dataset_uri: str, name: str, field_name: str = "spec.dataset_uri") -> list[dict[str, Any]]:
    """The records of one split; InvalidSpec naming the file and line of any malformed one."""
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
            if missing:
                problems.append((field_name, f"{where} lacks string field(s) {', '.join(missing)}"))
                continue
            records.append(record)
            if len(problems) >= 10:
                break
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return records


def tokenize_record(
    tokenizer: Any, prompt: str, completion: str, max_seq_length: int
) -> tuple[Example | None, bool]:
    """(example, truncated) for one record; example is None when the prompt fills max_seq_length.

    Prompt and completion are tokenized separately, so the prompt's tokens are
    exactly those a server sees when it is asked to complete that prompt.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = [*completion_ids, tokenizer.eos_token_id]
    room = max_seq_length - len(prompt_ids)
    if room <= 0:
        return None, False
    truncated = len(completion_ids) > room
    completion_ids = completion_ids[:room]
    return (
        Example(
            input_ids=prompt_ids + completion_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        ),
        truncated,
    )


def tokenize_records(tokenizer: Any, records: list[dict[str, Any]], max_seq_length: int) -> TokenizedSplit:
    split = TokenizedSplit()
    for record in records:
        example, truncated = tokenize_record(
            tokenizer, record["prompt"], record["completion"], max_seq_length
        )
        if example is None:
            split.dropped += 1
            continue
        split.truncated += int(truncated)
        split.examples.append(example)
    return split


def collate(examples: list[Example], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE_INDEX on padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
