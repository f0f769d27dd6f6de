"""The LLM judge: its replies parsed, its requests bounded, its key chosen, its failures contained.

The judge endpoint is `StandinServer`, an OpenAI-compatible server on loopback
in this process standing in for a remote judge model (whose answers would be
neither free nor fixed); it counts the requests in flight and records each.
"""

from __future__ import annotations

import re
import time

import pytest

from slmops.core import predictor_key
from slmops.evaluation.config import JudgeConfig
from slmops.evaluation.judge import Judge, parse_rating, question, shorten
from slmops.testing.standin import StandinServer

_SECTION = re.compile(r"REFERENCE:\n(.*?)\n\nANSWER:\n(.*?)\n\nRating:", re.S)


def grader(model: str, prompt: str) -> str:
    """A judge that gives 9 to an answer equal to the reference and 2 to any other."""
    reference, answer = _SECTION.search(prompt).groups()
    if answer.strip() == reference.strip():
        return "Rating: 9. Reason: the same as the reference."
    return "Rating: 2. Reason: not the reference answer."


@pytest.mark.parametrize(
    ("reply", "score", "reason"),
    [
        ("Rating: 8. Reason: close enough.", 8, "close enough."),
        (" 7. Reason: right number", 7, "right number"),  # a completion continuing "Rating:"
        ("10", 10, ""),
        ("I'd say 7/10 since it is short", 7, "since it is short"),
        ("3 out of 10", 3, ""),
        ("Score: 4 - wrong unit", 4, "wrong unit"),
        ("**Rating:** 6", 6, ""),
        ("the answer has 2 errors", None, "the answer has 2 errors"),  # a number inside text is no rating
        ("0", None, "0"),
        ("11", None, "11"),
        ("100", None, "100"),
        ("8.5", None, "8.5"),
        ("Rating: 8.5", None, "Rating: 8.5"),
        ("", None, ""),
        (None, None, ""),
    ],  # fmt: skip
)
def test_parse_rating(reply, score, reason):
    assert parse_rating(reply) == (score, reason)


def test_shorten_keeps_one_line_and_redacts():
    assert shorten("a\n b  c") == "a b c"
    cut = shorten("x" * 500, 20)
    assert len(cut) == 20 and cut.endswith("…")
    assert "s3cret" not in shorten("see https://user:s3cret@example.com/x")


def _items(n: int, wrong_every: int = 0) -> list[tuple[str, str, str]]:
    return [(f"{i}+1=", str(i + 1), str(i + 2) if wrong_every and i % wrong_every == 0 else str(i + 1))
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("bound", [1, 3])
def test_requests_go_concurrently_never_past_the_bound(bound):
    with StandinServer(grader, delay_s=0.15) as server:
        start = time.monotonic()
        summary = Judge(JudgeConfig(base_url=server.base_url, model="judge", concurrency=bound)).rate(
            _items(9)
        )
        elapsed = time.monotonic() - start
        assert server.peak_in_flight == bound  # reached, never passed
    assert summary["rated"] == 9 and summary["mean"] == 9.0 and summary["failed"] == 0
    assert elapsed >= 0.15 * 9 / bound  # the server's delay, bound requests at a time


def test_scores_counts_and_examples_from_completions_and_chat():
    with StandinServer(grader) as server:
        judge = Judge(JudgeConfig(base_url=server.base_url, model="judge"))
        summary = judge.rate(_items(8, wrong_every=4))  # items 0 and 4 are wrong
        assert server.requests[-1]["path"] == "/v1/completions"
        body = server.requests[-1]["body"]
        assert body["temperature"] == 0.0 and body["model"] == "judge" and body["prompt"].endswith("Rating:")
        chat = Judge(JudgeConfig(base_url=server.base_url, model="judge", chat=True)).rate(_items(2))
        assert server.requests[-1]["path"] == "/v1/chat/completions"
    assert summary["mean"] == pytest.approx((6 * 9 + 2 * 2) / 8)
    assert (summary["rated"], summary["unparseable"], summary["failed"], summary["total"]) == (8, 0, 0, 8)
    lowest, highest = summary["examples"][:2]
    assert lowest == {"prompt": "0+1=", "answer": "2", "reference": "1", "score": 2,
                      "reason": "not the reference answer."}  # fmt: skip
    assert highest["score"] == 9 and len(summary["examples"]) == 3
    assert chat["mean"] == 9.0


def test_unparseable_replies_are_counted_not_fatal():
    replies = iter(["Rating: 6", "no idea", "Rating: 8", "hmm, 42"])
    with StandinServer(lambda model, prompt: next(replies)) as server:
        summary = Judge(JudgeConfig(base_url=server.base_url, model="j", concurrency=1)).rate(_items(4))
    assert (summary["mean"], summary["rated"], summary["unparseable"], summary["error"]) == (7.0, 2, 2, "")
    assert [e["score"] for e in summary["examples"]] == [6, 8, None]
    assert summary["examples"][2]["reason"] == "no idea"  # what the judge said, shown
    with StandinServer(lambda model, prompt: "I cannot grade this") as server:
        nothing = Judge(JudgeConfig(base_url=server.base_url, model="j")).rate(_items(3))
    assert nothing["mean"] is None and nothing["unparseable"] == 3
    assert "none of the judge's 3 replies held a rating" in nothing["error"]


def test_an_unreachable_judge_fails_its_metric_once_with_the_reason():
    judge = Judge(JudgeConfig(base_url="http://127.0.0.1:9/v1", model="j", concurrency=2))  # nothing listens
    first = judge.rate(_items(6))
    assert first["mean"] is None and first["rated"] == 0 and first["failed"] == 6
    assert (
        first["error"].startswith("judge unavailable: APIConnectionError") and "127.0.0.1:9" in first["error"]
    )
    start = time.monotonic()
    second = judge.rate(_items(6))  # the next target's answers are not sent to it
    assert time.monotonic() - start < 1.0 and second["error"] == first["error"] and second["failed"] == 6


def test_bad_requests_fail_their_rating_only():
    with StandinServer(grader, fail_prompts=("3+1=",)) as server:  # a 500 for that prompt, every time
        summary = Judge(JudgeConfig(base_url=server.base_url, model="j")).rate(_items(5))
    assert (summary["rated"], summary["failed"], summary["mean"], summary["error"]) == (4, 1, 9.0, "")


def test_the_key_comes_from_api_key_env_or_is_the_predictor_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge-123")
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(predictor_key.ensure(tmp_path)))
    with StandinServer(grader) as server:
        Judge(JudgeConfig(base_url=server.base_url, model="j", api_key_env="JUDGE_API_KEY")).rate(_items(1))
        assert server.requests[-1]["authorization"] == "Bearer sk-judge-123"
        Judge(JudgeConfig(base_url=server.base_url, model="j")).rate(_items(1))  # loopback: a platform URL
        assert server.requests[-1]["authorization"] == f"Bearer {predictor_key.read()}"
        sent = len(server.requests)
        monkeypatch.delenv("JUDGE_API_KEY")
        unset = Judge(JudgeConfig(base_url=server.base_url, model="j", api_key_env="JUDGE_API_KEY")).rate(
            _items(2)
        )
        assert len(server.requests) == sent  # nothing sent without its key
    assert unset["mean"] is None and unset["failed"] == 2
    assert unset["error"].startswith("judge unavailable: ") and "JUDGE_API_KEY" in unset["error"]
    assert "sk-judge-123" not in unset["error"]


def test_the_question_of_a_conversation_is_its_turns():
    from slmops.evaluation.examples import Example

    assert question(Example("2+2=", "4")) == "2+2="
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert question(Example("2+2?", "4", messages=turns)) == "system: Be brief.\nuser: 2+2?"
    one = [{"role": "user", "content": "2+2?"}]
    assert question(Example("2+2?", "4", messages=one)) == "2+2?"  # one turn: its text, as a prompt
