"""The examples an evaluation asks every target: a dataset's validation split, or a JSONL file.

A record is a prompt (`{"prompt", "answer" or "completion"}`) or a conversation
(`{"messages": [...]}`, the last turn the assistant's answer: core/datasets).

- A chat target (`chat: true`) is sent a conversation's turns before the answer,
  exactly (the system turn included), at `/chat/completions`, so it renders them
  with its own chat template as training and the predictor do; a prompt is sent
  as one user turn.
- A plain target (`chat: false`) is sent the record's `prompt` at
  `/completions`. A conversation that has one beside it (synthesis with a chat
  teacher writes both) is sent that `prompt`, the user's text without system
  turn or template, as before; a conversation without one cannot be sent to a
  plain target: the spec is invalid, naming the target's `chat`.

The expected answer is the record's `answer` (a reference) when it has one,
else a conversation's last assistant turn, else the record's `completion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec

from slmops.core.datasets import VALIDATION_FILE, Prompt, conversation, parse_prompts, read_records
from slmops.core.errors import InvalidSpec

FIELD = "spec.dataset_uri"


@dataclass
class Example:
    prompt: str  # a conversation without one: its last user turn, for reading (has_prompt False)
    expected: str
    choices: list[str] | None = None  # multiple choice: the options, in letter order
    messages: list[dict[str, str]] | None = None  # a conversation's turns before the answer
    line: int = 0  # the record's number in its file (or split)
    has_prompt: bool = True  # whether `prompt` is the record's own, one a plain target can be sent

    def context(self, chat: bool) -> str | list[dict[str, str]]:
        """What a target is asked: the conversation's turns for a chat target, else the prompt."""
        return self.messages if chat and self.messages is not None else self.prompt


def _example(prompt: Prompt) -> Example | tuple[str, str]:
    """The Example of one record, or the problem that keeps it from being one."""
    fields = prompt.fields
    found = conversation(fields) if "messages" in fields else None
    if found is None and not isinstance(fields.get("prompt"), str):  # a checked conversation always parses
        return FIELD, f'line {prompt.line}: needs "prompt" or "messages"'
    expected = fields.get("answer")
    if expected is None:
        expected = found[1] if found is not None else fields.get("completion")
    if expected is None:
        return FIELD, f'line {prompt.line}: needs "answer" or "completion"'
    choices = fields.get("choices")
    text, has_prompt = fields.get("prompt"), isinstance(fields.get("prompt"), str)
    if found is not None and not has_prompt:
        users = [t["content"] for t in found[0] if t["role"] == "user"]
        text = users[-1] if users else found[0][-1]["content"]
    return Example(
        str(text),
        str(expected),
        [str(c) for c in choices] if isinstance(choices, list) else None,
        messages=found[0] if found is not None else None,
        line=prompt.line,
        has_prompt=has_prompt,
    )


def load_examples(dataset_uri: str, max_prompts: int = 0) -> list[Example]:
    """Examples from a dataset folder's validation split (JSONL or Parquet), or from a JSONL file."""
    fs, path = fsspec.core.url_to_fs(dataset_uri)
    if fs.isdir(path):
        records = read_records(dataset_uri, VALIDATION_FILE, FIELD, limit=max_prompts)
        prompts = [Prompt(number, record) for number, record in enumerate(records, start=1)]
    else:
        prompts = parse_prompts(_lines(dataset_uri, max_prompts), FIELD, allow_messages=True)
    examples, problems = [], []
    for prompt in prompts:
        made = _example(prompt)
        if isinstance(made, Example):
            examples.append(made)
        else:
            problems.append(made)
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    return examples[:max_prompts] if max_prompts else examples


def _lines(uri: str, most: int) -> list[str]:
    """The lines of a JSONL file; with most, only up to its first `most` non-blank ones."""
    lines: list[str] = []
    kept = 0
    with fsspec.open(uri, "r", encoding="utf-8") as fh:
        for line in fh:
            lines.append(line.rstrip("\r\n"))
            kept += bool(line.strip())
            if most and kept >= most:
                break
    return lines


def target_problems(examples: list[Example], chat: list[bool]) -> list[tuple[str, str]]:
    """A problem naming `spec.targets[i].chat` of each plain target (chat[i] false) when some example is a
    conversation without a prompt: only a chat target can be asked it."""
    chat_only = next((e for e in examples if not e.has_prompt), None)
    if chat_only is None:
        return []
    return [
        (
            f"spec.targets[{index}].chat",
            f"is false, but the dataset's record {chat_only.line} is a conversation "
            "(messages) without a prompt, which only a chat target can be asked (/chat/completions): set chat "
            "on this target, or give each record a prompt",
        )  # fmt: skip
        for index, is_chat in enumerate(chat)
        if not is_chat
    ]


def check_targets(examples: list[Example], targets: list[Any]) -> None:
    """InvalidSpec with `target_problems` of the targets (TargetConfig), if any."""
    problems = target_problems(examples, [bool(target.chat) for target in targets])
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
