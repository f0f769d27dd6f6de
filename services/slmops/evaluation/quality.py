"""Quality metrics of every measured target, on the answers it gave (besides accuracy).

Text metrics compare each answer with the expected one: ROUGE-L (mean over
examples), chrF and BLEU (corpus scores, sacrebleu's 0..100 scale), semantic
similarity (mean cosine of MiniLM embeddings). Perplexity is the model's on the
held-out answers (each expected answer given its prompt), read from
the target's model files (Hugging Face or ONNX Runtime GenAI), so it needs a
local model_uri. The judge, when configured, rates each answer 1..10 against the
expected one through its OpenAI-compatible endpoint (a host the egress allow-list
allows, with the key core/endpoints' `resolve_api_key` gives for it); mean score
in [0, 1]. A judge that cannot be used leaves a note, its reason cut short.
"""

from __future__ import annotations

import logging

import openai

from slmops.core import artifact_cache, artifacts
from slmops.core.endpoints import describe_error, openai_client, resolve_api_key
from slmops.core.errors import SlmopsError
from slmops.evaluation import metrics
from slmops.evaluation.client import Example, Measurement
from slmops.evaluation.config import EvaluationConfig

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


def judge_mean(
    cfg: EvaluationConfig, examples: list[Example], completions: list[str]
) -> tuple[float | None, str]:
    """The judge's mean score and a note ('' when every answer was scored)."""
    judge = cfg.judge
    assert judge is not None
    try:
        api_key = resolve_api_key(judge.api_key_env, judge.base_url, "spec.judge.api_key_env")
    except SlmopsError as exc:  # a key not allowed to go to the judge's host, or unset
        return None, f"judge unavailable: {exc}"
    client = openai_client(judge.base_url, api_key, timeout=120.0, max_retries=2)
    items = [(e.prompt, e.expected, c) for e, c in zip(examples, completions)]
    try:
        scores = metrics.judge_scores(client, judge.model, items, chat=judge.chat)
    except (openai.OpenAIError, SlmopsError) as exc:  # SlmopsError: a host the egress allow-list refuses
        return None, f"judge unavailable: {describe_error(exc, judge.base_url)}"
    unscored = sum(score is None for score in scores)
    note = f"the judge gave no score for {unscored} of {len(scores)} answers" if unscored else ""
    return metrics.mean(scores), note


def add_quality(cfg: EvaluationConfig, examples: list[Example], measured: list[Measurement]) -> None:
    """Fill each measured target's quality (and perplexity) in place."""
    names = cfg.quality_metrics
    held_out = [(e.prompt, e.expected) for e in examples]
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
                    m.perplexity = metrics.perplexity(folder, held_out)
                except (ValueError, OSError, RuntimeError) as exc:
                    m.notes.append(f"perplexity not measured: {exc}")
        if cfg.judge is not None:
            score, note = judge_mean(cfg, examples, m.completions)
            if score is not None:
                m.quality["judge"] = score
            if note:
                m.notes.append(note)
