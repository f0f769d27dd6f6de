"""Quality metrics of every measured target, on the answers it gave (besides accuracy).

Text metrics compare each answer with the expected one: ROUGE-L (mean over
examples), chrF and BLEU (corpus scores, sacrebleu's 0..100 scale), semantic
similarity (mean cosine of MiniLM embeddings). Perplexity is the model's on the
held-out answers (each expected answer given its prompt), read from
the target's model files (Hugging Face or ONNX Runtime GenAI), so it needs a
local model_uri. The judge, when configured, rates each answer 1..10 against the
expected one (judge.py): the mean rating is the quality value `judge`, and the
counts and a few example ratings go to the report; a judge that cannot be used
leaves the value out, with its reason in a note and in the report.
"""

from __future__ import annotations

import logging

from slmops.core import artifact_cache, artifacts
from slmops.core.errors import SlmopsError
from slmops.evaluation import metrics
from slmops.evaluation.client import Example, Measurement
from slmops.evaluation.config import EvaluationConfig
from slmops.evaluation.judge import Judge, question

log = logging.getLogger(__name__)


def _model_folder(uri: str) -> str:
    """The local folder of a model: itself, or the checked local copy of a sealed artifact on an object store;
    '' when there is none."""
    if not uri:
        return ""
    if not uri.startswith("file://"):
        if "://" not in uri or not artifacts.is_artifact(uri):
            return ""  # a hub id or an unsealed remote folder: nothing to check a copy by
        try:
            return str(artifact_cache.fetch(uri, "model_uri"))
        except SlmopsError as exc:
            log.warning("perplexity: could not fetch %s: %s", uri, exc)
            return ""
    path = artifacts.local_path(uri)
    return str(path) if path.is_dir() else ""


def text_metrics(names: list[str], examples: list[Example], completions: list[str]) -> dict[str, float]:
    expected = [e.expected for e in examples]
    values: dict[str, float] = {}
    if "rouge_l" in names:
        values["rouge_l"] = (
            metrics.mean([metrics.rouge_l(e, c) for e, c in zip(expected, completions)]) or 0.0
        )
    if "chrf" in names:
        values["chrf"] = metrics.chrf(completions, expected)
    if "bleu" in names:
        values["bleu"] = metrics.bleu(completions, expected)
    if "semantic_similarity" in names:
        scores = metrics.semantic_similarity().scores(expected, completions)
        values["semantic_similarity"] = metrics.mean(scores) or 0.0
    return values


def add_quality(cfg: EvaluationConfig, examples: list[Example], measured: list[Measurement]) -> None:
    """Fill each measured target's quality (and perplexity) in place."""
    names = cfg.quality_metrics
    # each answer given what the target was asked: a chat target, a conversation's turns (examples.py)
    held_out = {t.name: [(e.context(t.chat), e.expected) for e in examples] for t in cfg.targets}
    judge = Judge(cfg.judge) if cfg.judge is not None else None
    for m in measured:
        if m.status != "ok":
            continue
        m.quality.update(text_metrics(names, examples, m.completions))
        if "perplexity" in names:
            folder = _model_folder(m.model_uri)
            if not folder:
                m.notes.append(
                    "perplexity needs the target's model_uri: a local model folder or a sealed artifact"
                )
            else:
                try:
                    m.perplexity = metrics.perplexity(folder, held_out[m.name])
                except (ValueError, OSError, RuntimeError) as exc:
                    m.notes.append(f"perplexity not measured: {exc}")
        if judge is not None:
            m.judge = judge.rate([(question(e), e.expected, c) for e, c in zip(examples, m.completions)])
            if m.judge["mean"] is not None:
                m.quality["judge"] = m.judge["mean"]
            if m.judge["error"]:
                m.notes.append(m.judge["error"])
