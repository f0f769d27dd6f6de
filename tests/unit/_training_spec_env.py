"""What the TrainingSpec tests share: a tiny model, datasets under one data dir, and spec helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.api.v1 import training_pb2 as pb
from slmops.core import artifacts
from slmops.core.errors import InvalidSpec
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training.spec import from_proto

RECORDS = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in ((1, 2), (12, 30), (7, 7), (40, 2))]


def _write(folder: Path, train: list[dict], validation: list[dict] | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    if validation is not None:
        (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in validation))
    return artifacts.to_uri(folder)


def _topk(tokenizer, record: dict, vocab_size: int) -> dict:
    """A synthesis record carrying the teacher's top-2 log-probabilities with token ids."""
    ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    top = {
        "token_ids": ids,
        "tokens": [tokenizer.decode([i]) for i in ids],
        "top_ids": [[i, tokenizer.eos_token_id] for i in ids],
        "top_tokens": [[tokenizer.decode([i]), "<eos>"] for i in ids],
        "top_logprobs": [[-0.1, -2.4] for _ in ids],
    }
    return {**record, "teacher": {"model": "t", "vocab_size": vocab_size}, "top_logprobs": top}


def build_root(tmp_path_factory) -> Path:
    """A tiny qwen2 model, a teacher of another vocabulary and datasets, all under one data dir."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("data")
    tok_dir = train_tokenizer(["12+34=46", "0123456789+="], root / "tok", vocab_size=258)
    model = build_model(
        root / "model",
        tok_dir,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    config = json.loads((model / "config.json").read_text())
    (root / "big-vocab").mkdir()
    (root / "big-vocab" / "config.json").write_text(json.dumps({**config, "vocab_size": 512}))

    tokenizer = AutoTokenizer.from_pretrained(model)
    vocab = config["vocab_size"]
    _write(root / "ds", RECORDS, RECORDS[:2])
    _write(root / "train-only", RECORDS)
    _write(
        root / "topk",
        [_topk(tokenizer, r, vocab) for r in RECORDS],
        [_topk(tokenizer, r, vocab) for r in RECORDS[:2]],
    )
    _write(root / "topk-512", [_topk(tokenizer, r, 512) for r in RECORDS])
    # Hand-written records may name their teacher with a plain string.
    _write(root / "topk-named", [{**_topk(tokenizer, r, vocab), "teacher": "big-model"} for r in RECORDS])
    (root / "empty").mkdir()
    return root


def _uri(root: Path, name: str) -> str:
    return artifacts.to_uri(root / name)


def _spec(root: Path, **fields) -> pb.TrainingSpec:
    base = {
        "method": pb.SFT_DISTILL,
        "base": pb.ModelInit(model=str(root / "model")),
        "dataset_uri": _uri(root, "ds"),
    }
    base.update(fields)
    return pb.TrainingSpec(**base)


def _problems(spec: pb.TrainingSpec, deep: bool = True) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        from_proto(spec, deep=deep)
    problems = info.value.problems
    fields = [f for f, _ in problems]
    assert len(fields) == len(set(fields)), problems  # one problem per field in these specs
    return dict(problems)
