"""A converted ORT GenAI model checked against its PyTorch source (`conversion.verify`).

The random tiny checkpoint (and its fp32/int4/adapter conversions) is shared
with the other tests; it repeats one token over and over, so every greedy
comparison on it agrees trivially. A second model, the same checkpoint
trained for a few dozen steps on text that continues the built-in prompts,
decodes varied tokens and gives the int4 conversion real divergences.

Verification runs on one thread here: on a busy two-core machine two torch
threads spin against each other and a 0.3 s verification takes 10 s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from slmops.conversion.verify import (
    DEFAULT_PROMPTS,
    DEFAULT_THRESHOLDS,
    Thresholds,
    kl_divergence,
    thresholds_for,
    verify,
)
from slmops.core.errors import InvalidSpec
from tests.integration._models import (
    copy_with,
    tiny_adapters,
    tiny_checkpoint,
    tiny_onnx,
    tiny_onnx_with_adapters,
)

pytestmark = pytest.mark.integration

FP32, INT4 = DEFAULT_THRESHOLDS["fp32"], DEFAULT_THRESHOLDS["int4"]
# Texts that continue DEFAULT_PROMPTS, for the trained model.
CORPUS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    "Question: What is 12 + 7?\nAnswer: 19",
    "Question: What is 3 + 4?\nAnswer: 7",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "User: Can you recommend a good book?\nAssistant: Try a novel by Jane Austen.",
    '{"name": "Alice", "age": 30, "city": "London"}',
    "The three primary colors are red, yellow and blue.",
    "Translate to French: Good morning, how are you?\nBonjour, comment allez-vous ?",
    "the quick brown fox jumps over the lazy dog",
]


def _verify(source: Path, onnx_dir: Path, thresholds: Thresholds, **kwargs):
    return verify(source, onnx_dir, None, thresholds, threads=1, **kwargs)


def _train(checkpoint: Path, out: Path, steps: int = 40) -> Path:
    """The checkpoint after `steps` full-batch AdamW steps on CORPUS (about 4 s on one thread)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        rows = [tokenizer.encode(text) + [tokenizer.eos_token_id] for text in CORPUS]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full_like(ids, -100)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval().save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """{"source", "fp32", "int4"}: a briefly trained tiny model and its two CPU conversions."""
    from onnxruntime_genai.models.builder import create_model

    base = tmp_path_factory.mktemp("verify-trained")
    source = _train(tiny_checkpoint(tmp_path_factory), base / "source")
    folders = {"source": source}
    for precision in ("fp32", "int4"):
        folders[precision] = base / precision
        create_model(str(source), str(source), str(folders[precision]), precision, "cpu",
                     str(base / "cache"), hf_remote=False)  # fmt: skip
    shutil.rmtree(base / "cache", ignore_errors=True)
    return folders


def _corrupt_one_weight(folder: Path) -> None:
    """Set one element of the final norm's scale to 30 in model.onnx.data (a one-number bug)."""
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    (tensor,) = [t for t in graph.initializer if "final_norm" in t.name]
    offset = int({e.key: e.value for e in tensor.external_data}["offset"])
    with open(folder / "model.onnx.data", "r+b") as data:
        data.seek(offset)
        data.write(np.float32(30.0).tobytes())


def test_fp32_answers_like_its_source_near_exactly(tmp_path_factory):
    source, onnx_dir = tiny_checkpoint(tmp_path_factory), tiny_onnx(tmp_path_factory, "fp32")

    events = []
    result = _verify(source, onnx_dir, FP32, progress=lambda f, m, **kw: events.append((f, m, kw)))

    assert result.passed and result.reasons == []
    assert events[-1][:2] == (1.0, "verification passed") and events[-1][2]["verify_passed"] == 1.0
    assert result.token_agreement == result.exact_match == result.top1_agreement == 1.0
    assert result.logits_rel_error < 1e-5 and result.mean_kl < 1e-9
    assert result.tokenizer_agreement == 1.0
    assert len(result.prompts) == len(DEFAULT_PROMPTS)
    assert all(p.divergence is None and p.reference == p.candidate for p in result.prompts)
    assert all(p.positions >= p.prompt_tokens + len(p.reference) - 1 for p in result.prompts)
    assert result.positions == sum(p.positions for p in result.prompts)
    record = json.loads(json.dumps(result.as_dict()))
    assert record["passed"] is True and record["thresholds"] == FP32.model_dump()
    assert record["prompts"][0]["prompt"] == DEFAULT_PROMPTS[0]
    assert result.metrics()["verify_passed"] == 1.0


def test_int4_passes_its_defaults_but_not_fp32s(tmp_path_factory):
    source, onnx_dir = tiny_checkpoint(tmp_path_factory), tiny_onnx(tmp_path_factory, "int4")

    result = _verify(source, onnx_dir, INT4)
    strict = _verify(source, onnx_dir, FP32)

    assert result.passed, result.reasons
    assert 1e-3 < result.logits_rel_error <= INT4.max_logits_rel_error
    assert not strict.passed
    assert any(r.startswith("logits relative error") for r in strict.reasons), strict.reasons


def test_trained_model_decodes_varied_tokens_and_int4_diverges_within_bounds(trained):
    exact = _verify(trained["source"], trained["fp32"], FP32)
    int4 = _verify(trained["source"], trained["int4"], INT4)

    assert exact.passed and exact.token_agreement == 1.0, exact.reasons
    assert all(len(set(p.reference)) > 3 for p in exact.prompts)  # not one repeated token
    assert int4.passed, int4.reasons
    assert int4.mean_kl > 1e3 * exact.mean_kl and int4.logits_rel_error > 1e-2
    assert int4.top1_agreement < 1.0  # int4 flips some argmaxes of this model
    diverged = [p for p in int4.prompts if p.divergence is not None]
    for p in diverged:
        assert p.reference[: p.divergence] == p.candidate[: p.divergence]
        assert p.reference[p.divergence : p.divergence + 1] != p.candidate[p.divergence : p.divergence + 1]
    assert int4.exact_match == 1 - len(diverged) / len(int4.prompts)


def test_a_corrupted_weight_fails_with_reasons(tmp_path_factory, trained):
    broken = copy_with(trained["fp32"], tmp_path_factory.mktemp("verify-broken") / "m", _corrupt_one_weight)

    result = _verify(trained["source"], broken, FP32)
    loosest = _verify(trained["source"], broken, INT4)

    assert not result.passed
    joined = "; ".join(result.reasons)
    assert "logits relative error" in joined and "KL" in joined, joined
    assert result.as_dict()["reasons"] == result.reasons
    assert not loosest.passed  # even int4's bounds catch a one-number bug
    assert {r.split()[0] for r in loosest.reasons} >= {"logits", "mean"}, loosest.reasons
    diverged = [p.divergence for p in result.prompts if p.divergence is not None]
    assert diverged, "a corrupted model should decode differently somewhere"


def test_an_absurd_threshold_fails_even_a_faithful_model(tmp_path_factory):
    source, onnx_dir = tiny_checkpoint(tmp_path_factory), tiny_onnx(tmp_path_factory, "fp32")
    absurd = Thresholds(min_token_agreement=1.0, max_logits_rel_error=0.0, max_kl=0.0)

    result = _verify(source, onnx_dir, absurd, new_tokens=2)

    assert not result.passed and len(result.reasons) == 2, result.reasons


def test_adapter_matches_its_peft_source_and_the_wrong_one_fails(tmp_path_factory):
    source, adapters = tiny_checkpoint(tmp_path_factory), tiny_adapters(tmp_path_factory)
    onnx_dir = tiny_onnx_with_adapters(tmp_path_factory, "fp32")

    right = _verify(source, onnx_dir, FP32, adapter=("alpha", adapters["alpha"]))
    wrong = _verify(source, onnx_dir, FP32, adapter=("alpha", adapters["beta"]))
    base = _verify(source, onnx_dir, FP32)  # no adapter active: the base model

    assert right.passed and right.adapter == "alpha", right.reasons
    assert right.logits_rel_error < 1e-5
    assert base.passed, base.reasons
    assert not wrong.passed
    assert wrong.logits_rel_error > 1e-2 and wrong.mean_kl > FP32.max_kl, wrong.reasons
    with pytest.raises(InvalidSpec, match="no adapter 'gamma'"):
        _verify(source, onnx_dir, FP32, adapter=("gamma", adapters["alpha"]))


def test_thresholds_are_validated_and_loosen_with_precision():
    with pytest.raises(ValidationError):
        Thresholds(min_token_agreement=1.5, max_logits_rel_error=0.1, max_kl=0.1)
    order = [thresholds_for(p) for p in ("fp32", "fp16", "bf16", "int8", "int4")]
    for tighter, looser in zip(order, order[1:], strict=False):
        assert tighter.min_token_agreement >= looser.min_token_agreement
        assert tighter.max_logits_rel_error < looser.max_logits_rel_error
        assert tighter.max_kl < looser.max_kl
    with pytest.raises(InvalidSpec):
        thresholds_for("int3")


def test_kl_is_zero_for_equal_logits_and_ignores_a_shift():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])

    assert np.allclose(kl_divergence(logits, logits + 7.0), 0.0)
    assert (kl_divergence(logits, logits[:, ::-1]) > 0.1).all()
