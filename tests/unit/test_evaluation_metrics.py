"""Quality metrics on crafted cases: accuracy kinds, ROUGE-L, chrF and BLEU, retention, and semantic
similarity with the packaged MiniLM model (the judge's tests: test_evaluation_judge*.py)."""

from __future__ import annotations

import pytest

from slmops.evaluation import metrics

CAPITALS = {"choices": ["Paris", "Berlin", "Rome"]}
ANSWER = {"pattern": r"answer is (\d+)"}


@pytest.mark.parametrize(
    ("kind", "expected", "completion", "options", "ok"),
    [
        ("exact", "68", " 68\nmore", {}, True),
        ("exact", " 68 ", "68   \nmore", {}, True),
        ("exact", "68", "68.", {}, False),
        ("exact", "68", "\n\n68", {}, True),  # stripped before the cut, as is_correct always did
        ("exact", "Paris", "paris", {}, False),
        ("normalized", "The Eiffel Tower", "eiffel tower.\nIt is in Paris", {}, True),
        ("normalized", "an  apple!", "Apple", {}, True),
        ("normalized", "Paris", "Lyon", {}, False),
        ("normalized", "Paris", "Lyon\nParis", {}, False),  # only the first line counts
        ("regex", "42", "Let me think... the answer is 42.", ANSWER, True),
        ("regex", "42", "the answer is 41", ANSWER, False),
        ("regex", "42", "no number here", ANSWER, False),
        ("regex", "42", "first 7 then 42", {"pattern": r"\d+"}, False),  # the first match, not any
        ("regex", "The End", "...\nthe end!", {"pattern": r"the end\W*$"}, True),  # whole match, normalized
        ("choice", "B", "B) Berlin", CAPITALS, True),
        ("choice", "B", "(b)", CAPITALS, True),
        ("choice", "B", "Answer: B", CAPITALS, True),
        ("choice", "B", "The answer is B.", CAPITALS, True),
        ("choice", "Berlin", "berlin", CAPITALS, True),
        ("choice", "Berlin", "B", CAPITALS, True),
        ("choice", "B", "the Berlin.", CAPITALS, True),
        ("choice", "B", "A", CAPITALS, False),
        ("choice", "B", "Rome", CAPITALS, False),
        ("choice", "B", "D", CAPITALS, False),  # not an option's letter
        ("choice", "B", "Bonn", CAPITALS, False),
        ("choice", "B", "A cat", {"choices": ["dog", "cat"]}, True),  # the option's text, not the article
        ("choice", "Lyon", "Berlin", CAPITALS, False),  # expected is no option: compared as text
        ("choice", "Lyon", "lyon", CAPITALS, True),
        ("choice", "Berlin", "Bonn", {}, False),  # no choices: no first-letter guess
        ("choice", "C", "(c) rome", {}, True),
    ],
)
def test_accuracy_kinds(kind, expected, completion, options, ok):
    assert metrics.accuracy_check(kind, expected, completion, **options) is ok


def test_exact_match_is_the_accuracy_check_of_kind_exact():
    for completion in ("68", " 68 \n", "68.", "x\n68"):
        assert metrics.exact_match("68", completion) is metrics.accuracy_check("exact", "68", completion)


def test_unknown_accuracy_kind():
    with pytest.raises(ValueError, match="accuracy kind"):
        metrics.accuracy_check("fuzzy", "a", "a")


def test_rouge_l():
    assert metrics.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert metrics.rouge_l("The cat, sat.", "the CAT sat") == 1.0  # lowercased, punctuation split off
    assert metrics.rouge_l("the cat", "a dog") == 0.0
    # LCS of [a b c d] and [a c e]: "a c" (2): precision 2/3, recall 2/4 -> F1 4/7
    assert metrics.rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    # LCS of [x y z] and [z y x]: one word: precision = recall = 1/3
    assert metrics.rouge_l("x y z", "z y x") == pytest.approx(1 / 3)
    assert (
        metrics.rouge_l("", "") == 1.0 and metrics.rouge_l("x", "") == 0.0 and metrics.rouge_l("", "x") == 0.0
    )


def test_chrf_and_bleu_order_answers_by_closeness():
    refs = ["the refund window is thirty days", "reset it from the sign-in page"]
    near_hyps = ["the refund window is 30 days", "reset it on the sign in page"]
    same = metrics.chrf(refs, refs), metrics.bleu(refs, refs)
    near = metrics.chrf(near_hyps, refs), metrics.bleu(near_hyps, refs)
    far = metrics.chrf(["bananas", "purple"], refs), metrics.bleu(["bananas", "purple"], refs)
    assert same[0] == pytest.approx(100.0) and same[1] == pytest.approx(100.0)
    assert same[0] > near[0] > far[0] and same[1] > near[1] > far[1]
    assert metrics.chrf([], []) == 0.0 and metrics.bleu([], []) == 0.0


def test_bleu_scores_one_word_answers_on_their_matches():
    assert metrics.bleu(["68"], ["68"]) == pytest.approx(100.0)
    assert metrics.bleu(["68", "12", "7"], ["68", "13", "7"]) == pytest.approx(200 / 3)  # 2 of 3 words
    assert metrics.bleu(["12"], ["13"]) == 0.0


def test_mean_and_retention():
    assert metrics.mean([1.0, None, 0.0]) == 0.5 and metrics.mean([None]) is None and metrics.mean([]) is None
    assert metrics.retention(0.6, 0.8) == pytest.approx(0.75)
    assert metrics.retention(0.9, 0.6) == pytest.approx(1.5)  # a student may beat its teacher
    assert metrics.retention(0.0, 0.8) == 0.0
    assert metrics.retention(0.6, 0.0) is None and metrics.retention(0.6, None) is None
    assert metrics.retention(None, 0.8) is None


@pytest.mark.integration
def test_semantic_similarity_with_the_packaged_model():
    model = metrics.semantic_similarity()
    assert metrics.semantic_similarity() is model  # loaded once per process
    same, paraphrase, unrelated = model.scores(
        ["How do I reset my password?"] * 3,
        [
            "How do I reset my password?",
            "What are the steps to change my password?",
            "The weather is sunny today.",
        ],
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > 0.6 > 0.2 > unrelated
    # Batching and padding do not change a pair's score.
    one_at_a_time = metrics.SemanticSimilarity(batch_size=1).scores(
        ["How do I reset my password?"] * 2, ["What are the steps to change my password?", "hi"]
    )
    assert one_at_a_time[0] == pytest.approx(paraphrase, abs=1e-5)
    assert model.scores([], []) == []
    with pytest.raises(ValueError, match="1 references but 2 candidates"):
        model.scores(["a"], ["a", "b"])
