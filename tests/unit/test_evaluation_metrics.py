"""Quality metrics on crafted cases: accuracy kinds, ROUGE-L, chrF and BLEU, the judge's parsing,
retention, and semantic similarity with the packaged MiniLM model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slmops.evaluation import metrics


@pytest.mark.parametrize(
    ("kind", "expected", "completion", "options", "ok"),
    [
        ("exact", "68", " 68\nmore", {}, True),
        ("exact", "68", "68.", {}, False),
        ("normalized", "The Eiffel Tower", "eiffel tower.\nIt is in Paris", {}, True),
        ("normalized", "Paris", "Lyon", {}, False),
        ("regex", "42", "Let me think... the answer is 42.", {"pattern": r"answer is (\d+)"}, True),
        ("regex", "42", "the answer is 41", {"pattern": r"answer is (\d+)"}, False),
        ("regex", "42", "no number here", {"pattern": r"answer is (\d+)"}, False),
        ("choice", "B", "B) Berlin", {"choices": ["Paris", "Berlin", "Rome"]}, True),
        ("choice", "B", "(b)", {"choices": ["Paris", "Berlin", "Rome"]}, True),
        ("choice", "B", "Answer: B", {"choices": ["Paris", "Berlin", "Rome"]}, True),
        ("choice", "Berlin", "berlin", {"choices": ["Paris", "Berlin", "Rome"]}, True),
        ("choice", "B", "A", {"choices": ["Paris", "Berlin", "Rome"]}, False),
        ("choice", "B", "Rome", {"choices": ["Paris", "Berlin", "Rome"]}, False),
    ],
)
def test_accuracy_kinds(kind, expected, completion, options, ok):
    assert metrics.accuracy_check(kind, expected, completion, **options) is ok


def test_unknown_accuracy_kind():
    with pytest.raises(ValueError, match="accuracy kind"):
        metrics.accuracy_check("fuzzy", "a", "a")


def test_rouge_l():
    assert metrics.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert metrics.rouge_l("the cat", "a dog") == 0.0
    # LCS of [a b c d] and [a c e]: "a c" (2): precision 2/3, recall 2/4 -> F1 4/7
    assert metrics.rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    assert metrics.rouge_l("", "") == 1.0 and metrics.rouge_l("x", "") == 0.0


def test_chrf_and_bleu_order_answers_by_closeness():
    refs = ["the refund window is thirty days", "reset it from the sign-in page"]
    same = metrics.chrf(refs, refs), metrics.bleu(refs, refs)
    near = metrics.chrf(["the refund window is 30 days", "reset it on the sign in page"], refs), \
        metrics.bleu(["the refund window is 30 days", "reset it on the sign in page"], refs)
    far = metrics.chrf(["bananas", "purple"], refs), metrics.bleu(["bananas", "purple"], refs)
    assert same[0] == pytest.approx(100.0) and same[1] == pytest.approx(100.0)
    assert same[0] > near[0] > far[0] and same[1] > near[1] > far[1]
    assert metrics.bleu(["68"], ["68"]) == pytest.approx(100.0)  # one-word answers are scored
    assert metrics.chrf([], []) == 0.0


class FakeJudge:
    """A stand-in for a paid remote judge endpoint: replies in turn, records the prompts."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, model, messages, temperature, max_tokens):
        assert temperature == 0.0
        self.prompts.append(messages[0]["content"])
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=self.replies.pop(0)))])


def test_judge_scores_parse_the_rating():
    judge = FakeJudge(["10", "Rating: 1", "I'd say 7/10", "no idea"])
    items = [("q", "ref", "a")] * 4
    assert metrics.judge_scores(judge, "judge-model", items) == [1.0, 0.0, pytest.approx(6 / 9), None]
    assert "REFERENCE:\nref" in judge.prompts[0]
    assert metrics.mean([1.0, None, 0.0]) == 0.5 and metrics.mean([None]) is None


def test_retention():
    assert metrics.retention(0.6, 0.8) == pytest.approx(0.75)
    assert metrics.retention(0.6, 0.0) is None and metrics.retention(None, 0.8) is None


@pytest.mark.integration
def test_semantic_similarity_with_the_packaged_model():
    model = metrics.semantic_similarity()
    same, paraphrase, unrelated = model.scores(
        ["How do I reset my password?"] * 3,
        ["How do I reset my password?", "What are the steps to change my password?", "The weather is sunny today."],
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > 0.6 > 0.2 > unrelated
