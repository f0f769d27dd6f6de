"""The synthesis job's output: answered prompts split, written and counted as a dataset folder.

The record schema, the prompts reader and the dataset reader are shared with
training and evaluation (core/datasets.py). The split is seeded and deterministic.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import fsspec

from slmops.core.datasets import STATS_FILE, TRAIN_FILE, VALIDATION_FILE


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
    _write_jsonl(fs, f"{root}/{TRAIN_FILE}", [records[i] for i in train])
    _write_jsonl(fs, f"{root}/{VALIDATION_FILE}", [records[i] for i in validation])
    stats = {
        **dataset_stats(records, train, validation),
        "seed": seed,
        "validation_fraction": validation_fraction,
        **(extra_stats or {}),
    }
    with fs.open(f"{root}/{STATS_FILE}", "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
    return stats


