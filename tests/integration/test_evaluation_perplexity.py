"""Perplexity of held-out answers under a Hugging Face checkpoint and its ONNX Runtime GenAI export."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slmops.evaluation import perplexity
from tests.integration._models import tiny_checkpoint, tiny_onnx

pytestmark = pytest.mark.integration
PAIRS = [
    ("user: hi there\nassistant:", " hello, how can I help?"),
    ("the quick brown", " fox jumps over the lazy dog"),
]
LONG = ("question: what is 2 + 3? answer: 5\n" * 4, "hello world, this is a tiny model")


def _direct(model_dir, pairs, keep: int = 0) -> float:
    """The same quantity computed here with torch, token by token; keep > 0 scores the last `keep`
    tokens of each sequence as a `keep`-token window (the oldest context dropped)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for context, text in pairs:
            ids = tok(context + text)["input_ids"]
            start = len(tok(context)["input_ids"]) if context else 1
            if keep:
                start, ids = start - (len(ids) - keep), ids[-keep:]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            for position in range(start, len(ids)):
                nll -= float(torch.log_softmax(logits[position - 1], -1)[ids[position]])
                count += 1
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory):
    return tiny_onnx(tmp_path_factory, "fp32")


def test_checkpoint_perplexity_matches_a_direct_computation(checkpoint):
    hf = perplexity.perplexity(checkpoint, PAIRS)
    assert hf > 1 and math.isfinite(hf)
    assert hf == pytest.approx(_direct(checkpoint, PAIRS), rel=1e-4)
    # Whole texts (no context) are scored from their second token on; a file:// URI names the folder.
    texts = ["hello there, how can I help?", "the lazy dog"]
    assert perplexity.perplexity(f"file://{checkpoint}", texts) == pytest.approx(
        _direct(checkpoint, [("", t) for t in texts]), rel=1e-4
    )
    # Too long: the oldest context tokens go first, the answer is still scored whole.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    answer_tokens = len(tok(LONG[0] + LONG[1])["input_ids"]) - len(tok(LONG[0])["input_ids"])
    window = answer_tokens + 4
    cut = perplexity.perplexity_hf(checkpoint, [LONG], max_length=window)
    assert cut == pytest.approx(_direct(checkpoint, [LONG], keep=window), rel=1e-4)
    assert cut != pytest.approx(_direct(checkpoint, [LONG]), rel=1e-3)  # the window did change it


def test_onnx_export_perplexity_is_close_to_the_checkpoints(checkpoint, onnx_fp32):
    hf = perplexity.perplexity_hf(checkpoint, PAIRS + [LONG])
    onnx = perplexity.perplexity(onnx_fp32, PAIRS + [LONG])
    assert onnx == pytest.approx(hf, rel=0.02)
    short = dict(max_length=12)
    assert perplexity.perplexity_onnx(onnx_fp32, [LONG], **short) == pytest.approx(
        perplexity.perplexity_hf(checkpoint, [LONG], **short), rel=0.02
    )


def test_onnx_models_giving_only_the_last_logits_are_fed_a_token_at_a_time(onnx_fp32, monkeypatch):
    import onnxruntime_genai as og

    whole = perplexity.perplexity_onnx(onnx_fp32, PAIRS)
    real, appended = og.Generator, []

    class LastLogitsOnly:
        """A generator whose model returns the last position's logits only."""

        def __init__(self, model, params):
            self.inner = real(model, params)

        def append_tokens(self, tokens):
            appended.append(tokens.shape[1])
            self.inner.append_tokens(tokens)

        def get_output(self, name):
            return np.asarray(self.inner.get_output(name))[:, -1:, :]

    monkeypatch.setattr(og, "Generator", LastLogitsOnly)
    assert perplexity.perplexity_onnx(onnx_fp32, PAIRS) == pytest.approx(whole, rel=1e-5)
    assert appended.count(1) >= 10  # the answers' tokens went in one by one


def test_what_cannot_be_scored(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="no text long enough"):
        perplexity.perplexity(checkpoint, [("hello world", ""), "a"])
    with pytest.raises(ValueError, match="neither"):
        perplexity.perplexity(tmp_path, PAIRS)
    with pytest.raises(ValueError, match="local model folder"):
        perplexity.perplexity("s3://bucket/model", PAIRS)
