"""The student's chat template: the base tokenizer's own, or the one `spec.chat_template` names.

`spec.chat_template` is empty (keep the base's template), a template the
package ships (`chatml`, slmops.core.chat_template.SHIPPED) or a `.jinja` file
under the allowed roots. A named template replaces the tokenizer's; a shipped
one's special tokens (SHIPPED_TOKENS) are added to the tokenizer when it lacks
them, and the model's embeddings grow to match (a real base such as Qwen2.5
already has them: nothing is added). The checkpoint keeps the template
(`chat_template.jinja` and tokenizer_config.json `chat_template`) and lists the
end-of-turn token among generation_config's EOS ids, so every runtime renders
and stops as training did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slmops.core import artifacts, settings
from slmops.core.chat_template import SHIPPED, SHIPPED_TOKENS, render
from slmops.core.errors import InvalidSpec
from slmops.training.data import IGNORE_INDEX, special_ids, tokenize_messages

FIELD = "spec.chat_template"
MAX_TEMPLATE_BYTES = 1 << 20
_PROBE = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]


def check(value: str) -> str:
    """The value as the job reads it: a shipped name, or a .jinja file's absolute file:// URI.

    InvalidSpec naming spec.chat_template when it is neither, or the template
    does not compile and render a short conversation.
    """
    if not value or value in SHIPPED:
        return value
    if not value.endswith(".jinja"):
        raise InvalidSpec(
            FIELD, f"{value!r} is neither a shipped template ({', '.join(SHIPPED)}) nor a .jinja file"
        )
    uri = artifacts.confine(value, settings.allowed_roots(), FIELD)
    if not uri.startswith("file://"):
        raise InvalidSpec(FIELD, "a template file must be a local .jinja file")
    load(uri)
    return uri


def load(value: str) -> tuple[str, tuple[str, ...]]:
    """(template text, the special tokens it needs) of a shipped name or a .jinja file."""
    if value in SHIPPED:
        return SHIPPED[value], SHIPPED_TOKENS.get(value, ())
    path = artifacts.local_path(value)
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise InvalidSpec(FIELD, f"{value!r} is larger than {MAX_TEMPLATE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec(FIELD, f"cannot read {value!r}: {exc}") from None
    try:
        render(text, _PROBE, {}, add_generation_prompt=True)
    except InvalidSpec as exc:
        raise InvalidSpec(FIELD, f"{value!r} does not compile or render: {exc.problems[0][1]}") from None
    return text, ()


def apply(tokenizer: Any, value: str) -> list[str]:
    """Give the tokenizer the named template (nothing for an empty value); the tokens added to its vocabulary."""
    if not value:
        return []
    text, tokens = load(value)
    vocab = tokenizer.get_vocab()
    special = {tokenizer.convert_ids_to_tokens(i) for i in special_ids(tokenizer)}
    added = [t for t in tokens if t not in vocab]
    unmarked = [t for t in tokens if t not in special]
    if unmarked:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": unmarked}, replace_extra_special_tokens=False
        )
    tokenizer.chat_template = text
    return added


def missing_tokens(tokenizer: Any, value: str) -> list[str]:
    """The shipped template's special tokens the tokenizer lacks (what `apply` would add)."""
    if value not in SHIPPED_TOKENS:
        return []
    vocab = tokenizer.get_vocab()
    return [t for t in SHIPPED_TOKENS[value] if t not in vocab]


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the tokenizer's template ends an assistant turn with (None without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        example, _ = tokenize_messages(tokenizer, _PROBE, 1 << 16)
    except InvalidSpec:
        return None
    labelled = (
        [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX] if example else []
    )
    return labelled[-1] if labelled and labelled[-1] in special_ids(tokenizer) else None


def eos_ids(tokenizer: Any) -> list[int]:
    """The ids generation stops at: the tokenizer's EOS and the template's end of turn."""
    ids = [int(tokenizer.eos_token_id)]
    turn = end_of_turn_id(tokenizer)
    if turn is not None and turn not in ids:
        ids.append(int(turn))
    return ids


def save(folder: str, tokenizer: Any) -> None:
    """Write the tokenizer's chat template into a saved model folder, both places runtimes read it."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return
    Path(folder, "chat_template.jinja").write_text(template, encoding="utf-8")
    config_path = os.path.join(folder, "tokenizer_config.json")
    config = json.loads(Path(config_path).read_text(encoding="utf-8")) if os.path.isfile(config_path) else {}
    config["chat_template"] = template
    Path(config_path).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
