"""Perplexity of held-out answers under a Hugging Face checkpoint and its ONNX Runtime GenAI export."""

from __future__ import annotations

import math

import pytest

from slmops.evaluation import metrics

from ._models import tiny_checkpoint, tiny_onnx

pytestmark = pytest.mark.integration
PAIRS = [("user: hi there\nassistant:", " hello, how can I help?"), ("the quick brown", " fox jumps over the lazy dog")]


def _direct(model_dir, pairs) -> float:
    """The same quantity computed here with torch, token by token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for context, text in pairs:
            start = len(tok(context)["input_ids"])
            ids = tok(context + text)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            for position in range(start, len(ids)):
                nll -= float(torch.log_softmax(logits[position - 1], -1)[ids[position]])
                count += 1
    return math.exp(nll / count)


def test_perplexity_of_a_checkpoint_and_of_its_onnx_export(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory)
    hf = metrics.perplexity(checkpoint, PAIRS)
    assert hf > 1 and math.isfinite(hf)
    assert hf == pytest.approx(_direct(checkpoint, PAIRS), rel=1e-4)
    onnx = metrics.perplexity(tiny_onnx(tmp_path_factory, "fp32"), PAIRS)
    assert onnx == pytest.approx(hf, rel=0.02)
    # Whole texts (no context) are scored from their second token on.
    assert metrics.perplexity(checkpoint, ["hello there, how can I help?"]) > 1
    with pytest.raises(ValueError, match="neither"):
        metrics.perplexity(tmp_path_factory.mktemp("empty"), PAIRS)
