"""Dataset artifacts for training: read JSONL records and tokenize them.

A dataset folder holds `train.jsonl` and (optionally) `validation.jsonl`, one
record per line: `{"prompt": str, "completion": str, ...}`, or `{"text": str}`
for full fine-tuning on plain text. Each record becomes the token sequence of
`prompt + completion + eos` with no chat template, the way the predictor serves
plain completions. With `Labels.COMPLETION` (distillation, LoRA) the loss covers
only the completion and the final EOS token; with `Labels.ALL` (full
fine-tuning) it covers every token.

A synthesis dataset may carry the teacher's top-k log-probabilities with token
ids (`record["top_logprobs"]`, see slmops.core.datasets). Then the
completion's tokens are the teacher's own token ids (no re-tokenizing), and each
of them carries the teacher's top-k distribution for logit distillation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmops.core.datasets import (  # noqa: F401  (the dataset reader, shared: core/datasets.py)
    TRAIN_FILE,
    VALIDATION_FILE,
    has_topk_ids,
    read_records,
    split_exists,
    split_uri,
)

IGNORE_INDEX = -100  # label value the loss skips


class Labels:
    COMPLETION = "completion"  # loss on the completion and EOS only
    ALL = "all"  # loss on every token


@dataclass
class Example:
    """One tokenized record: inputs and labels of equal length.

    `top_ids[t]`/`top_logprobs[t]` are the teacher's top-k for the token at
    position t (empty where the teacher gave none); both are empty lists when
    the record has no stored top-k.
    """

    input_ids: list[int]
    labels: list[int]
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)


@dataclass
class TokenizedSplit:
    examples: list[Example] = field(default_factory=list)
    dropped: int = 0  # records whose prompt left no room for the completion
    truncated: int = 0  # records whose completion was cut at max_seq_length


def tokenize_record(
    tokenizer: Any,
    prompt: str,
    completion: str,
    max_seq_length: int,
    labels: str = Labels.COMPLETION,
    top: dict[str, Any] | None = None,
) -> tuple[Example | None, bool]:
    """(example, truncated) for one record; example is None when the prompt fills max_seq_length.

    Prompt and completion are tokenized separately, so the prompt's tokens are
    exactly those a server sees when it is asked to complete that prompt. With
    `top` (stored top-k with ids), the completion is the teacher's token ids.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    top_ids: list[list[int]] = []
    top_lps: list[list[float]] = []
    if top is not None:
        completion_ids = [int(i) for i in top["token_ids"]]
        top_ids = [[int(i) for i in row] for row in top["top_ids"]]
        top_lps = [[float(v) for v in row] for row in top["top_logprobs"]]
    else:
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    room = max_seq_length - len(prompt_ids)
    if room <= 0:
        return None, False
    truncated = len(completion_ids) > room
    completion_ids = completion_ids[:room]
    prompt_labels = prompt_ids if labels == Labels.ALL else [IGNORE_INDEX] * len(prompt_ids)
    example = Example(input_ids=prompt_ids + completion_ids, labels=prompt_labels + completion_ids)
    if top is not None:
        rows = (top_ids + [[]] * len(completion_ids))[: len(completion_ids)]
        values = (top_lps + [[]] * len(completion_ids))[: len(completion_ids)]
        example.top_ids = [[]] * len(prompt_ids) + rows
        example.top_logprobs = [[]] * len(prompt_ids) + values
    return example, truncated


def tokenize_text(tokenizer: Any, text: str, max_seq_length: int) -> tuple[Example | None, bool]:
    """A plain-text record: every token (and the final EOS) is a label."""
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    truncated = len(ids) > max_seq_length
    ids = ids[:max_seq_length]
    return (Example(input_ids=ids, labels=list(ids)) if len(ids) >= 2 else None), truncated


def tokenize_records(
    tokenizer: Any,
    records: list[dict[str, Any]],
    max_seq_length: int,
    labels: str = Labels.COMPLETION,
    use_topk: bool = False,
) -> TokenizedSplit:
    split = TokenizedSplit()
    for record in records:
        if isinstance(record.get("text"), str) and "prompt" not in record:
            example, truncated = tokenize_text(tokenizer, record["text"], max_seq_length)
        else:
            top = record["top_logprobs"] if use_topk and has_topk_ids(record) else None
            example, truncated = tokenize_record(
                tokenizer, record["prompt"], record["completion"], max_seq_length, labels, top
            )
        if example is None:
            split.dropped += 1
            continue
        split.truncated += int(truncated)
        split.examples.append(example)
    return split


def collate(examples: list[Example], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE_INDEX on padding).

    With stored top-k: `top_ids` [B, T, K] and `top_logprobs` [B, T, K] too
    (padding slots hold id 0 and -inf).
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    batch = _pad(examples, pad_token_id, width)
    k = max((len(row) for e in examples for row in e.top_ids), default=0)
    if k:
        top_ids = torch.zeros((len(examples), width, k), dtype=torch.long)
        top_lps = torch.full((len(examples), width, k), float("-inf"))
        for b, example in enumerate(examples):
            for t, (ids, lps) in enumerate(zip(example.top_ids, example.top_logprobs)):
                if ids:
                    top_ids[b, t, : len(ids)] = torch.tensor(ids)
                    top_lps[b, t, : len(lps)] = torch.tensor(lps)
        batch.update(top_ids=top_ids, top_logprobs=top_lps)
    return batch


def _pad(examples: list[Example], pad_token_id: int, width: int) -> dict[str, Any]:
    import torch

    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
