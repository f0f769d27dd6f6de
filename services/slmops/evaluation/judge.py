"""The LLM judge: an OpenAI-compatible model rates each answer 1..10 against the reference answer.

`Judge` is built once per evaluation run from the spec's judge: its bearer
token is core/endpoints' `resolve_api_key` (the key named by api_key_env, read
where the job runs and only for a host the operator allowed for it; with no
name, the platform's predictor key when the judge is one of the platform's own
deployments), and its connections pass the egress allow-list. `Judge.rate`
sends one greedy request per answer, at most `concurrency` at once, and sums
them up: the mean score over the replies that hold a rating, how many were
rated, unparseable (a reply without a rating: counted, never fatal) or failed,
and a few example ratings for the report.

A judge that cannot be used (unreachable, refused by the egress allow-list, a
401/403/404, a key that may not go to its host) stops after the first such
error, and the later targets are not sent to it: the judge metric is then
missing with the reason (`error`), and the job goes on. Other request errors
(a 400 for a prompt too long, a 5xx after the client's retries) fail that
answer's rating only.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai

from slmops.core import secret_refs
from slmops.core.endpoints import describe_error, openai_client, resolve_api_key
from slmops.core.errors import SlmopsError
from slmops.evaluation.config import JudgeConfig

PROMPT = (
    "You grade answers. Compare the ANSWER with the REFERENCE answer to the QUESTION and rate how "
    "correct and complete the ANSWER is, from 1 (wrong or unrelated) to 10 (as good as the reference). "
    'Reply on one line as "Rating: <1-10>. Reason: <a few words>".\n\n'
    "QUESTION:\n{prompt}\n\nREFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\nRating:"
)
MAX_TOKENS = 64  # a rating and a short reason
TIMEOUT_S = 120.0
FIELD_CHARS = 4000  # question, reference and answer are each cut to this in the judge's prompt
SHOWN_EXAMPLES = 3  # example ratings per target in the report
SHOWN_CHARS = 160  # each text of an example, cut to this

_SCORE = r"(10|[1-9])(?!\d|\.\d)"
_LABELLED = re.compile(r"\b(?:rating|score|grade)\s*(?:is|of)?\s*[:=]?\s*\**\s*" + _SCORE, re.IGNORECASE)
_OUT_OF = re.compile(r"(?<![\d.])(10|[1-9])\s*(?:/|out of)\s*10\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W{0,3}" + _SCORE)
_REASON = re.compile(r"\breason\s*[:=-]\s*", re.IGNORECASE)
_FATAL = (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
          openai.NotFoundError, SlmopsError)  # fmt: skip


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """Text on one line, URL passwords redacted, cut to limit characters (an ellipsis marks a cut)."""
    line = secret_refs.redact(" ".join(str(text).split()))
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def parse_rating(reply: str | None) -> tuple[int | None, str]:
    """(rating 1..10 or None, the judge's reason). The rating is the number after "Rating:" (or
    "Score:"), else the first "N/10" or "N out of 10", else a number opening the reply; a number
    outside 1..10 or with decimals is no rating. The reason is what follows "Reason:", else what
    follows the rating, else the whole reply."""
    text = (reply or "").strip()
    found = _LABELLED.search(text) or _OUT_OF.search(text) or _LEADING.search(text)
    labelled = _REASON.search(text)
    if labelled:
        reason = text[labelled.end() :]
    elif found:
        reason = re.sub(
            r"^\s*(?:/\s*10|out of 10)?[\s.:;,)\-]*", "", text[found.end() :], flags=re.IGNORECASE
        )
    else:
        reason = text
    return (int(found.group(1)) if found else None), reason.strip()


def question(example: Any) -> str:
    """What the judge is told was asked: an example's prompt, or, for a conversation of more than one
    turn (or without a prompt of its own), its turns before the answer as "role: text" lines."""
    turns = getattr(example, "messages", None)
    if turns and (len(turns) > 1 or not getattr(example, "has_prompt", True)):
        return "\n".join(f"{t.get('role', '')}: {t.get('content', '')}" for t in turns)
    return example.prompt


@dataclass
class Rating:
    """One answer put to the judge: its reply and rating, or the request's error."""

    prompt: str
    reference: str
    answer: str
    score: int | None = None
    reply: str = ""
    reason: str = ""
    error: str = ""

    def request_text(self) -> str:
        return PROMPT.format(prompt=self.prompt[:FIELD_CHARS], reference=self.reference[:FIELD_CHARS],
                             answer=self.answer[:FIELD_CHARS])  # fmt: skip

    def shown(self) -> dict[str, Any]:
        return {"prompt": shorten(self.prompt), "answer": shorten(self.answer),
                "reference": shorten(self.reference), "score": self.score,
                "reason": shorten(self.reason or self.reply)}  # fmt: skip


def examples(ratings: list[Rating], count: int = SHOWN_EXAMPLES) -> list[dict[str, Any]]:
    """A few replies worth reading: the lowest rating, the highest, an unparseable reply, then the first
    others (failed requests are left out: the counts and the error tell of them)."""
    replied = [r for r in ratings if not r.error]
    rated = sorted((r for r in replied if r.score is not None), key=lambda r: r.score or 0)
    unparseable = [r for r in replied if r.score is None]
    picked: list[Rating] = []
    for candidate in [*rated[:1], *rated[-1:], *unparseable[:1], *replied]:
        if len(picked) < count and all(candidate is not p for p in picked):
            picked.append(candidate)
    return [r.shown() for r in picked]


def summary(ratings: list[Rating], error: str = "") -> dict[str, Any]:
    """A target's judge figures: mean (1..10, None when missing), rated, unparseable, failed, total,
    error (why the mean is missing) and a few example ratings."""
    scores = [r.score for r in ratings if r.score is not None]
    failed = [r for r in ratings if r.error]
    if not error and ratings and len(failed) == len(ratings):
        error = f"every judge request failed; first: {failed[0].error}"
    if not error and not scores and ratings:
        error = f"none of the judge's {len(ratings) - len(failed)} replies held a rating 1..10"
    return {
        "mean": sum(scores) / len(scores) if scores and not error else None,
        "rated": len(scores),
        "unparseable": sum(1 for r in ratings if r.score is None and not r.error),
        "failed": len(failed),
        "total": len(ratings),
        "error": error,
        "examples": examples(ratings),
    }


class Judge:
    """The spec's judge for one run; `rate` scores one target's answers."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.down = ""  # why the judge cannot be used; once set, nothing more is sent to it
        self.client: Any = None
        try:
            api_key = resolve_api_key(config.api_key_env, config.base_url, "spec.judge.api_key_env")
            self.client = openai_client(config.base_url, api_key, timeout=TIMEOUT_S, max_retries=2)
        except SlmopsError as exc:  # a key unset, or not allowed to go to the judge's host
            self.down = f"judge unavailable: {exc}"

    def _ask(self, text: str) -> str:
        cfg = self.config
        if cfg.chat:
            reply = self.client.chat.completions.create(model=cfg.model, temperature=0.0, max_tokens=MAX_TOKENS,
                                                        messages=[{"role": "user", "content": text}])  # fmt: skip
            return reply.choices[0].message.content or ""
        reply = self.client.completions.create(model=cfg.model, prompt=text, temperature=0.0,
                                               max_tokens=MAX_TOKENS)  # fmt: skip
        return reply.choices[0].text or ""

    def _rate_one(self, rating: Rating, stop: threading.Event, lock: threading.Lock) -> None:
        if stop.is_set():
            rating.error = "not sent: the judge could not be used"
            return
        try:
            rating.reply = self._ask(rating.request_text())
        except (openai.OpenAIError, SlmopsError) as exc:
            rating.error = describe_error(exc, self.config.base_url)
            if isinstance(exc, _FATAL):
                with lock:
                    self.down = self.down or f"judge unavailable: {rating.error}"
                stop.set()
            return
        rating.score, rating.reason = parse_rating(rating.reply)

    def rate(self, items: list[tuple[str, str, str]]) -> dict[str, Any]:
        """The summary of the judge's ratings of (prompt, reference, answer) items, at most
        config.concurrency requests in flight."""
        ratings = [Rating(prompt, reference, answer) for prompt, reference, answer in items]
        stop, lock = threading.Event(), threading.Lock()
        if self.down:
            stop.set()
        with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="judge") as pool:
            list(pool.map(lambda r: self._rate_one(r, stop, lock), ratings))
        return summary(ratings, self.down)


# -- the report's section ---------------------------------------------------------------


def _cell(text: Any, limit: int = 80) -> str:
    """Text fit for a Markdown table cell: one line, pipes escaped, cut to limit."""
    return shorten(text, limit).replace("|", "\\|") or " "


def markdown(targets: list[dict[str, Any]], judge_model: str = "") -> list[str]:
    """report.md's judge section from report.json's target entries (name, judge, retention): per target
    the mean rating, its retention, the counts and why a mean is missing, then a few example ratings.
    No lines when no target was judged."""
    judged = [t for t in targets if t.get("judge")]
    if not judged:
        return []
    lines = ["", "## LLM judge", "",
             f"{f'`{judge_model}`' if judge_model else 'The judge'} rated each answer 1..10 against the reference "
             "answer; the mean is over the replies that held a rating (unparseable replies are counted, not "
             "scored).", "",
             "| target | mean (1..10) | retention | rated | unparseable | failed |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for t in judged:
        j, kept = t["judge"], (t.get("retention") or {}).get("judge")
        mean = "n/a" if j.get("mean") is None else f"{j['mean']:.2f}"
        lines.append(f"| {t['name']} | {mean} | {'n/a' if kept is None else f'{kept:.1%}'} | {j.get('rated', 0)} "
                     f"| {j.get('unparseable', 0)} | {j.get('failed', 0)} |")  # fmt: skip
    errors = [f"- **{t['name']}**: {t['judge']['error']}" for t in judged if t["judge"].get("error")]
    lines += ["", *errors] if errors else []
    rows = [(t["name"], e) for t in judged for e in t["judge"].get("examples", [])]
    if rows:
        lines += ["", "Example ratings (shortened):", "",
                  "| target | score | prompt | answer | reference | the judge's reason |",
                  "| --- | ---: | --- | --- | --- | --- |"]  # fmt: skip
        for name, e in rows:
            score = "unparseable" if e.get("score") is None else str(e["score"])
            cells = " | ".join(_cell(e.get(key, "")) for key in ("prompt", "answer", "reference", "reason"))
            lines.append(f"| {name} | {score} | {cells} |")
    return lines
