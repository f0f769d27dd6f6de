"""The seed benchmark's cheap parts: the teacher's shape, the arithmetic, the size reader, a tiny teacher served.

The real measurement (a 3.8B teacher) runs in `make bench`, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from slmops.bench import seed
from slmops.bench.registry import Skipped, result_row
from slmops.demo import task
from slmops.predictor.loading import load_engine

# A Phi3 model with every feature of PHI4_MINI (partial rotary, longrope, tied embeddings), tiny:
# head 16 wide, 12 of it rotary, so 6 factors each.
TINY: dict = {
    **seed.PHI4_MINI,
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_scaling": {
        "type": "longrope",
        "long_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
        "short_factor": [1.0] * 6,
    },
    "bos_token_id": 300,
    "eos_token_id": 301,
    "pad_token_id": 300,
}


def test_phi4_mini_shape_has_its_published_parameter_count():
    config = seed.phi3_config()
    # Phi-4-mini-instruct: 3,836,021,760 parameters (the LM head tied to the 200064 x 3072 embedding).
    assert seed.parameters(config) == 3_836_021_760
    assert config.dtype == torch.bfloat16
    head = config.hidden_size // config.num_attention_heads
    assert int(head * config.rope_parameters["partial_rotary_factor"]) == 96
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.tie_word_embeddings and config.model_type == "phi3"


def test_reduction_is_the_share_the_student_saves():
    assert seed.reduction(20.0, 3.0) == pytest.approx(0.85)
    assert seed.reduction(100.0, 100.0) == 0.0
    assert seed.reduction(10.0, 12.0) < 0  # a student that takes more shows as a negative reduction


def test_benchmarks_ratio_reads_as_the_reduction(monkeypatch):
    # measurements() stands in for the served models here (a 3.8B teacher runs only in `make bench`).
    run = {"prompt": "p", "tokens": [seed.MAX_TOKENS] * 3, "ready_seconds": [1.0], "load_average": [0.5]}
    run["parameters"] = 1
    teacher = {**run, "seconds": [30.0, 20.0, 40.0], "peak_rss_bytes": 8000 * 2**20, "weights_bytes": 7.7e9}
    student = {**run, "seconds": [1.0, 3.0, 2.0], "peak_rss_bytes": 400 * 2**20, "weights_bytes": 3.0e8}
    teacher["build_seconds"] = 60.0
    monkeypatch.setattr(seed, "measurements", lambda: {"teacher": teacher, "student": student})
    rows = {
        name: result_row(name, fn())
        for name, fn in [
            ("latency", seed.seed_latency_reduction),
            ("memory", seed.seed_memory_reduction),
            ("size", seed.seed_size_reduction),
        ]
    }
    assert rows["latency"]["ratio"] == pytest.approx(1 - 2.0 / 30.0)  # medians
    assert rows["memory"]["ratio"] == pytest.approx(0.95)
    assert rows["size"]["ratio"] == pytest.approx(1 - 3.0e8 / 7.7e9)
    details = seed.seed_latency_reduction().details
    assert details["measured_reductions"]["memory"] == pytest.approx(0.95)
    assert details["teacher_run"]["tokens_per_second"] == pytest.approx(seed.MAX_TOKENS / 30.0, abs=0.01)


def test_student_runs_before_and_after_the_teacher_pool_into_one():
    first = {"prompt": "p", "seconds": [1.0], "tokens": [32], "ready_seconds": [2.0], "load_average": [1.0]}
    second = {**first, "seconds": [3.0], "load_average": [4.0]}
    pooled = seed._pooled({**first, "peak_rss_bytes": 10}, {**second, "peak_rss_bytes": 12})
    assert pooled["seconds"] == [1.0, 3.0] and pooled["load_average"] == [1.0, 4.0]
    assert pooled["tokens"] == [32, 32] and pooled["peak_rss_bytes"] == 12


def test_check_room_skips_where_the_teacher_cannot_fit(tmp_path):
    seed.check_room(1, tmp_path)  # a byte always fits
    with pytest.raises(Skipped, match="GB of memory"):
        seed.check_room(2**60, tmp_path)


def test_weights_bytes_counts_only_the_served_weights(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 1000)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 5000)
    assert seed.weights_bytes(tmp_path) == 1110


def test_tiny_teacher_is_served_in_bf16_and_writes_every_token(tmp_path):
    folder = seed.build_teacher(tmp_path / "teacher", TINY)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "phi3" and config["dtype"] == "bfloat16"
    [weights] = list(Path(folder).glob("*.safetensors"))
    with safe_open(str(weights), "pt") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    assert embed.dtype == torch.bfloat16
    assert not embed[task.TOKENIZER_VOCAB_SIZE :].any() and embed[: task.TOKENIZER_VOCAB_SIZE].any()
    engine = load_engine(folder)
    assert engine.name == "transformers"
    assert engine.model.dtype == torch.bfloat16  # the checkpoint's dtype, not float32
    done = engine.generate("12+34=", max_tokens=seed.MAX_TOKENS)
    assert done.completion_tokens == seed.MAX_TOKENS and done.finish_reason == "length"
    assert done.text
