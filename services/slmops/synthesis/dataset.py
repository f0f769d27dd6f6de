"""The synthesis job's output: answered prompts split, written and counted as a dataset folder.

The record schema, the prompts reader and the dataset reader are shared with
training and evaluation (core/datasets.py). The split is seeded and
deterministic; stratified by a label field when one is named, so each value
keeps its share in both splits. Each split is written as Parquet shards of at
most `rows_per_shard` records under `data/`, with one schema per split, and
the first train records go to `preview.jsonl`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import fsspec

from slmops.core.datasets import DATA_DIR, PREVIEW_FILE, STATS_FILE, to_arrow

ROWS_PER_SHARD = 10_000
PREVIEW_ROWS = 50


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


def stratified_indices(
    labels: list[str], validation_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) with each label's share of validation as close to validation_fraction as
    whole records allow (largest remainders), seeded; a label with one record stays in train."""
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    total = round(len(labels) * validation_fraction)
    if len(labels) >= 2:
        total = min(max(total, 1), len(labels) - 1)
    exact = {label: len(members) * validation_fraction for label, members in groups.items()}
    take = {label: min(int(share), max(len(groups[label]) - 1, 0)) for label, share in exact.items()}
    by_remainder = sorted(groups, key=lambda label: (-(exact[label] - int(exact[label])), label))
    for label in by_remainder * 2:  # hand out what rounding down left, largest remainder first
        if sum(take.values()) >= total:
            break
        if take[label] < len(groups[label]) - 1:
            take[label] += 1
    rng = random.Random(seed)
    validation: list[int] = []
    for label in sorted(groups):
        members = list(groups[label])
        rng.shuffle(members)
        validation.extend(members[: take[label]])
    chosen = set(validation)
    return [i for i in range(len(labels)) if i not in chosen], sorted(validation)


def dataset_stats(records: list[dict[str, Any]], train: list[int], validation: list[int]) -> dict[str, Any]:
    tokens = [r["teacher"]["completion_tokens"] for r in records]
    return {
        "num_train": len(train),
        "num_validation": len(validation),
        "completion_tokens": sum(tokens),
        "mean_completion_tokens": (sum(tokens) / len(tokens)) if tokens else 0.0,
        "finish_reasons": dict(Counter(r["teacher"]["finish_reason"] for r in records)),
    }


def _write_split(fs: fsspec.AbstractFileSystem, root: str, split: str, records: list[dict[str, Any]],
                 rows_per_shard: int) -> list[str]:  # fmt: skip
    """Write one split as Parquet shards under data/ (one, empty, for no records); their names."""
    import pyarrow.parquet as pq

    table = to_arrow(records)
    count = max(1, -(-len(records) // rows_per_shard))
    names = []
    for shard in range(count):
        name = f"{DATA_DIR}/{split}-{shard:05d}-of-{count:05d}.parquet"
        with fs.open(f"{root}/{name}", "wb") as fh:
            pq.write_table(table.slice(shard * rows_per_shard, rows_per_shard), fh, compression="zstd")
        names.append(name)
    return names


def write_dataset(
    uri: str,
    records: list[dict[str, Any]],
    *,
    validation_fraction: float,
    seed: int,
    label_column: str = "",
    rows_per_shard: int = ROWS_PER_SHARD,
    extra_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Split records, write the Parquet shards, preview.jsonl and stats.json under uri; return the stats."""
    if label_column:
        labels = [json.dumps(r.get(label_column), sort_keys=True) for r in records]
        train, validation = stratified_indices(labels, validation_fraction, seed)
    else:
        train, validation = split_indices(len(records), validation_fraction, seed)
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(f"{root}/{DATA_DIR}", exist_ok=True)
    shards = {split: _write_split(fs, root, split, [records[i] for i in indices], rows_per_shard)
              for split, indices in (("train", train), ("validation", validation))}  # fmt: skip
    with fs.open(f"{root}/{PREVIEW_FILE}", "w", encoding="utf-8") as fh:
        for i in train[:PREVIEW_ROWS]:
            fh.write(json.dumps(records[i], ensure_ascii=False) + "\n")
    stats = {
        **dataset_stats(records, train, validation),
        "seed": seed,
        "validation_fraction": validation_fraction,
        "shards": shards,
        **(extra_stats or {}),
    }
    if label_column:
        stats["label_column"] = label_column
        stats["labels"] = {split: dict(Counter(str(records[i].get(label_column)) for i in indices))
                           for split, indices in (("train", train), ("validation", validation))}  # fmt: skip
    with fs.open(f"{root}/{STATS_FILE}", "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
    return stats
