"""Dataset artifacts for training: read JSONL records and tokenize them.

A dataset folder holds `train.jsonl` and (optionally) `validation.jsonl`, one
record per line: `{"prompt": str, "completion": str, ...}`, or `{"text": str}`
for full fine-tuning on plain text. Each record becomes the token sequence of
`prompt + completion + eos` with no chat template, the way the predictor serves
plain completions. With `Labels.COMPLETION` (distillation, LoRA) the loss covers
only the completion and the final EOS token; with `Labels.ALL` (full
fine-tuning) it covers every token.

A chat record `{"messages": [{"role", "content"}, ...]}` (which wins over a
`prompt`/`completion` beside it) is rendered with the tokenizer's chat template
instead (`tokenize_messages`): each assistant turn's prompt is exactly what the
predictor's `/chat/completions` sends to the model, and the loss covers the
assistant turns and their end-of-turn token.

A synthesis dataset may carry the teacher's top-k log-probabilities with token
ids (`record["top_logprobs"]`, see slmops.core.datasets). Then the
completion's tokens are the teacher's own token ids (no re-tokenizing), and each
of them carries the teacher's top-k distribution for logit distillation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmops.core.chat_template import SHIPPED, check_messages, render
from slmops.core.datasets import (  # noqa: F401  (the dataset reader, shared: core/datasets.py)
    TRAIN_FILE,
    VALIDATION_FILE,
    has_topk_ids,
    read_records,
    split_exists,
    split_uri,
)
from slmops.core.errors import InvalidSpec

IGNORE_INDEX = -100  # label value the loss skips


class Labels:
    COMPLETION = "completion"  # loss on the completion and EOS only
    ALL = "all"  # loss on every token


@dataclass
class Example:
    """One tokenized record: inputs and labels of equal length.

    `top_ids[t]`/`top_logprobs[t]` are the teacher's top-k for the token at
    position t (empty where the teacher gave none); both are empty lists when
    the record has no stored top-k.
    """

    input_ids: list[int]
    labels: list[int]
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)


@dataclass
class TokenizedSplit:
    examples: list[Example] = field(default_factory=list)
    dropped: int = 0  # records whose prompt left no room for the completion
    truncated: int = 0  # records whose completion was cut at max_seq_length


def tokenize_record(
    tokenizer: Any,
    prompt: str,
    completion: str,
    max_seq_length: int,
    labels: str = Labels.COMPLETION,
    top: dict[str, Any] | None = None,
) -> tuple[Example | None, bool]:
    """(example, truncated) for one record; example is None when the prompt fills max_seq_length.

    Prompt and completion are tokenized separately, so the prompt's tokens are
    exactly those a server sees when it is asked to complete that prompt. With
    `top` (stored top-k with ids), the completion is the teacher's token ids.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    top_ids: list[list[int]] = []
    top_lps: list[list[float]] = []
    if top is not None:
        completion_ids = [int(i) for i in top["token_ids"]]
        top_ids = [[int(i) for i in row] for row in top["top_ids"]]
        top_lps = [[float(v) for v in row] for row in top["top_logprobs"]]
    else:
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    room = max_seq_length - len(prompt_ids)
    if room <= 0:
        return None, False
    truncated = len(completion_ids) > room
    completion_ids = completion_ids[:room]
    prompt_labels = prompt_ids if labels == Labels.ALL else [IGNORE_INDEX] * len(prompt_ids)
    example = Example(input_ids=prompt_ids + completion_ids, labels=prompt_labels + completion_ids)
    if top is not None:
        rows = (top_ids + [[]] * len(completion_ids))[: len(completion_ids)]
        values = (top_lps + [[]] * len(completion_ids))[: len(completion_ids)]
        example.top_ids = [[]] * len(prompt_ids) + rows
        example.top_logprobs = [[]] * len(prompt_ids) + values
    return example, truncated


def tokenize_text(tokenizer: Any, text: str, max_seq_length: int) -> tuple[Example | None, bool]:
    """A plain-text record: every token (and the final EOS) is a label."""
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    truncated = len(ids) > max_seq_length
    ids = ids[:max_seq_length]
    return (Example(input_ids=ids, labels=list(ids)) if len(ids) >= 2 else None), truncated


def tokenize_messages(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    max_seq_length: int,
    labels: str = Labels.COMPLETION,
    top: dict[str, Any] | None = None,
) -> tuple[Example | None, bool]:
    """(example, truncated) for a chat record rendered with the tokenizer's chat template.

    The prompt ids of each assistant turn are exactly the tokens of the template
    rendered over the turns before it with a generation prompt (what a chat
    server sends to the model); the labels are every assistant turn's tokens up
    to and including its end-of-turn token (every token with `Labels.ALL`).
    With `top` (stored top-k with ids), the final answer's content tokens are
    the teacher's ids, each with its top-k row. None when the first answer's
    prompt fills max_seq_length or the record has no assistant turn.
    """
    turns = check_messages(messages)
    answers = [i for i, m in enumerate(turns) if m["role"] == "assistant"]
    if not answers:
        return None, False
    template, config = template_of(tokenizer)
    special = special_ids(tokenizer)
    prompts = [render(template, turns[:i], config, add_generation_prompt=True) for i in answers]
    seq = _Sequence()
    for n, i in enumerate(answers):
        prompt = prompts[n]
        tail = render(template, turns[: i + 1], config, add_generation_prompt=False)
        later = prompts[n + 1] if n + 1 < len(prompts) else None
        if not tail.startswith(prompt) or (later is not None and not later.startswith(prompt)):
            raise InvalidSpec(
                "spec.chat_template",
                f"the chat template is not prefix-stable (message {i} renders differently once later "
                "messages follow, so training would not see what the server sends): name one that is, "
                "e.g. chatml",
            )
        tail = tail[len(prompt) :]
        if later is not None:  # what a later prompt holds of this answer (no closing EOS, say)
            tail = tail[: _common_prefix(tail, later[len(prompt) :])]
        seq.restart(_encode(tokenizer, prompt))
        if n == 0 and len(seq.ids) >= max_seq_length:
            return None, False
        final = later is None
        _answer(seq, tokenizer, tail, turns[i]["content"], special, top if final else None, final)
    truncated = len(seq.ids) > max_seq_length
    ids = seq.ids[:max_seq_length]
    example = Example(
        input_ids=ids, labels=list(ids) if labels == Labels.ALL else seq.labels[:max_seq_length]
    )
    if top is not None:
        example.top_ids, example.top_logprobs = seq.top_ids[:max_seq_length], seq.top_lps[:max_seq_length]
    return example, truncated


def template_of(tokenizer: Any) -> tuple[str, dict[str, Any]]:
    """(chat template, the token strings it is rendered with) of a tokenizer; InvalidSpec when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default") or next(iter(template.values()), None)
    if not template:
        raise InvalidSpec(
            "spec.chat_template",
            "the base model's tokenizer has no chat template and the dataset has messages records: "
            f"name one ({', '.join(SHIPPED)}) or a .jinja file",
        )
    return template, {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (an end of turn is one of them)."""
    found = {int(i) for i in tokenizer.all_special_ids}
    found.update(int(i) for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return found


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Sequence:
    """A conversation's tokens as they are built, turn by turn."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_lps: list[list[float]] = field(default_factory=list)

    def restart(self, prompt_ids: list[int]) -> None:
        """Continue with a turn's prompt ids: those already here are kept, the rest are no labels.

        The kept part is all of it unless the tokenizer merged tokens across the
        end of the previous turn; then the prompt's own tokens win.
        """
        keep = 0
        for a, b in zip(self.ids, prompt_ids):
            if a != b:
                break
            keep += 1
        del self.ids[keep:], self.labels[keep:], self.top_ids[keep:], self.top_lps[keep:]
        self.add(prompt_ids[keep:], label=False)

    def add(self, ids: list[int], label: bool, top_ids=None, top_lps=None) -> None:
        self.ids += ids
        self.labels += list(ids) if label else [IGNORE_INDEX] * len(ids)
        self.top_ids += top_ids if top_ids is not None else [[]] * len(ids)
        self.top_lps += top_lps if top_lps is not None else [[]] * len(ids)


def _encode(tokenizer: Any, text: str) -> list[int]:
    # A template writes its own BOS and special tokens, so none is added (as apply_chat_template does).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _answer(
    seq: _Sequence, tokenizer: Any, tail: str, content: str, special: set[int], top: Any, final: bool
) -> None:
    """Add one assistant turn: the template's rendering of it after its prompt.

    The labels run through the first special token after the content (the end
    of turn); what the template writes after that (a newline) belongs to the
    next prompt. With `top`, the content's tokens are the teacher's ids with
    their top-k rows. When the rendering does not hold the content verbatim (a
    template that rewrites it), the labels run through the tail's last special
    token and `top` is not used. A final answer the template ends with no
    special token ends with the tokenizer's EOS, as a plain completion does.
    """
    start = tail.find(content) if content else 0
    if start < 0 and content.strip():
        content = content.strip()
        start = tail.find(content)
    if start < 0:
        ids = _encode(tokenizer, tail)
        end = max((n + 1 for n, t in enumerate(ids) if t in special), default=0)
        _close(seq, tokenizer, ids, end, final)
        return
    seq.add(_encode(tokenizer, tail[:start]), label=True)
    if top is not None:
        body = [int(i) for i in top["token_ids"]]
        while body and body[-1] in special:  # the teacher's own end of turn: the template writes it
            body.pop()
        rows = [[int(i) for i in row] for row in top["top_ids"]][: len(body)]
        lps = [[float(v) for v in row] for row in top["top_logprobs"]][: len(body)]
        seq.add(body, label=True, top_ids=rows + [[]] * (len(body) - len(rows)),
                top_lps=lps + [[]] * (len(body) - len(lps)))  # fmt: skip
    else:
        seq.add(_encode(tokenizer, content), label=True)
    after = _encode(tokenizer, tail[start + len(content) :])
    _close(seq, tokenizer, after, next((n + 1 for n, t in enumerate(after) if t in special), 0), final)


def _close(seq: _Sequence, tokenizer: Any, ids: list[int], end: int, final: bool) -> None:
    """Add a turn's last tokens: labels through `end` (its end of turn), or EOS when none ends a final one."""
    if end == 0 and final and tokenizer.eos_token_id is not None:
        seq.add([*ids, tokenizer.eos_token_id], label=True)
        return
    seq.add(ids[:end], label=True)
    seq.add(ids[end:], label=False)


def tokenize_records(
    tokenizer: Any,
    records: list[dict[str, Any]],
    max_seq_length: int,
    labels: str = Labels.COMPLETION,
    use_topk: bool = False,
) -> TokenizedSplit:
    split = TokenizedSplit()
    for record in records:
        if isinstance(record.get("text"), str) and "prompt" not in record and "messages" not in record:
            example, truncated = tokenize_text(tokenizer, record["text"], max_seq_length)
        elif isinstance(record.get("messages"), list):
            top = record["top_logprobs"] if use_topk and has_topk_ids(record) else None
            example, truncated = tokenize_messages(tokenizer, record["messages"], max_seq_length, labels, top)
        else:
            top = record["top_logprobs"] if use_topk and has_topk_ids(record) else None
            example, truncated = tokenize_record(
                tokenizer, record["prompt"], record["completion"], max_seq_length, labels, top
            )
        if example is None:
            split.dropped += 1
            continue
        split.truncated += int(truncated)
        split.examples.append(example)
    return split


def collate(examples: list[Example], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE_INDEX on padding).

    With stored top-k: `top_ids` [B, T, K] and `top_logprobs` [B, T, K] too
    (padding slots hold id 0 and -inf).
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    batch = _pad(examples, pad_token_id, width)
    k = max((len(row) for e in examples for row in e.top_ids), default=0)
    if k:
        top_ids = torch.zeros((len(examples), width, k), dtype=torch.long)
        top_lps = torch.full((len(examples), width, k), float("-inf"))
        for b, example in enumerate(examples):
            for t, (ids, lps) in enumerate(zip(example.top_ids, example.top_logprobs)):
                if ids:
                    top_ids[b, t, : len(ids)] = torch.tensor(ids)
                    top_lps[b, t, : len(lps)] = torch.tensor(lps)
        batch.update(top_ids=top_ids, top_logprobs=top_lps)
    return batch


def _pad(examples: list[Example], pad_token_id: int, width: int) -> dict[str, Any]:
    import torch

    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
