"""The teacher's top-k log-probabilities in the form a dataset record stores.

    {
      "token_ids":    [int, ...] | None,  # the n generated tokens of the completion, in order
      "tokens":       [str, ...],         # their decoded text
      "top_ids":      [[int] * k] * n | None,  # the k most likely tokens at each position
      "top_tokens":   [[str] * k] * n,    # their decoded text
      "top_logprobs": [[float] * k] * n,  # their natural-log probabilities, descending
    }

One position per generated token. The local teacher also stores the EOS token
as the last position when generation stopped on it (its id, and the
distribution that chose it), so n == completion_tokens, plus 1 when it stopped
on EOS; its ids are always known. An endpoint's positions are the ones it
returns; their ids are known only with the teacher's tokenizer (`TokenTable`),
and are None for the whole record when any one of its tokens cannot be mapped.
A position holds fewer than k alternatives only when an endpoint returned fewer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from slmops.synthesis.token_table import TokenTable


class Position(NamedTuple):
    """One generated token as an endpoint returns it."""

    token: str  # the chosen token's text
    data: list[int] | None  # its UTF-8 bytes, when the endpoint gives them
    top: list[tuple[str, list[int] | None, float]]  # alternatives: text, bytes, logprob


def chat_positions(content: Sequence[Any]) -> list[Position]:
    """Positions from a chat completion's `logprobs.content`."""
    return [
        Position(item.token, item.bytes, [(t.token, t.bytes, t.logprob) for t in item.top_logprobs or []])
        for item in content
    ]


def completion_positions(tokens: Sequence[str], top: Sequence[dict[str, float] | None]) -> list[Position]:
    """Positions from a completion's `logprobs.tokens` and `logprobs.top_logprobs`."""
    return [
        Position(token, None, [(text, None, lp) for text, lp in (alternatives or {}).items()])
        for token, alternatives in zip(tokens, top)
    ]


def from_positions(positions: list[Position], table: TokenTable | None) -> tuple[dict[str, Any], int]:
    """The stored form of an endpoint's positions, and how many of their tokens had no id.

    Without a table no id is looked up: the count is 0.
    """
    tops = [sorted(p.top, key=lambda alt: -alt[2]) for p in positions]
    record: dict[str, Any] = {
        "token_ids": None,
        "tokens": [p.token for p in positions],
        "top_ids": None,
        "top_tokens": [[text for text, _, _ in top] for top in tops],
        "top_logprobs": [[float(lp) for _, _, lp in top] for top in tops],
    }
    if table is None:
        return record, 0
    token_ids = [table.id_of(p.token, p.data) for p in positions]
    top_ids = [[table.id_of(text, data) for text, data, _ in top] for top in tops]
    unmapped = token_ids.count(None) + sum(ids.count(None) for ids in top_ids)
    if not unmapped:
        record.update(token_ids=token_ids, top_ids=top_ids)
    return record, unmapped


def from_logits(
    token_ids: list[int], logits: Sequence[Any], k: int, decode: Callable[[list[int]], list[str]]
) -> dict[str, Any]:
    """The stored form for generated token_ids and the raw logits that chose them.

    logits holds one [vocab] tensor per generated token; decode gives the text of each id
    of a list. Log-probabilities are computed in float32.
    """
    import torch

    if not token_ids:
        return {"token_ids": [], "tokens": [], "top_ids": [], "top_tokens": [], "top_logprobs": []}
    stacked = torch.stack([step.float() for step in logits[: len(token_ids)]])
    values, ids = torch.log_softmax(stacked, dim=-1).topk(min(k, stacked.shape[-1]), dim=-1)
    top_ids = ids.tolist()
    flat = decode([i for row in top_ids for i in row])
    width = len(top_ids[0])
    return {
        "token_ids": list(token_ids),
        "tokens": decode(list(token_ids)),
        "top_ids": top_ids,
        "top_tokens": [flat[row * width : (row + 1) * width] for row in range(len(top_ids))],
        "top_logprobs": values.tolist(),
    }
