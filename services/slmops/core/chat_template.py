"""Chat prompts: the tokenizer's Jinja chat template, or a plain fallback.

The transformers engine renders templates through its tokenizer; the ORT GenAI
engine renders the same `chat_template` (from `tokenizer_config.json` or
`chat_template.jinja`) here with a sandboxed Jinja environment, as transformers
does, so that serving never needs torch for an ONNX model.
"""

from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from slmops.core.errors import InvalidSpec

ROLES = ("system", "user", "assistant", "tool", "developer")

# Templates the package ships, for a base whose tokenizer has none (TrainingSpec.chat_template).
# ChatML: each turn is `<|im_start|>ROLE\nCONTENT<|im_end|>\n`; the answer starts after
# `<|im_start|>assistant\n` and ends with `<|im_end|>`, the end-of-turn token.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SHIPPED = {"chatml": CHATML}
# The special tokens each shipped template needs in the vocabulary; the first one ends a turn.
SHIPPED_TOKENS = {"chatml": ("<|im_end|>", "<|im_start|>")}


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Messages as [{role, content}] with text content; InvalidSpec naming the bad field."""
    if not isinstance(messages, list) or not messages:
        raise InvalidSpec("messages", "must be a non-empty list of {role, content} objects")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidSpec(f"messages[{i}]", "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidSpec(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content):
                raise InvalidSpec(f"messages[{i}].content", "only text parts are supported")
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidSpec(f"messages[{i}].content", "must be a string")
        clean.append({"role": role, "content": content})
    return clean


def fallback_prompt(messages: list[dict[str, str]]) -> str:
    """A plain 'role: content' transcript ending with 'assistant:' for models without a template."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def read_template(model_dir: str | Path) -> tuple[str | None, dict[str, Any]]:
    """(chat template or None, tokenizer_config) of a model folder."""
    folder = Path(model_dir)
    config: dict[str, Any] = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    jinja_path = folder / "chat_template.jinja"
    if jinja_path.is_file():
        return jinja_path.read_text(encoding="utf-8"), config
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return (template or None), config


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # AddedToken serialised as an object
        return str(value.get("content", ""))
    return "" if value is None else str(value)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    return env.from_string(template)


def render(
    template: str,
    messages: list[dict[str, str]],
    tokenizer_config: dict[str, Any],
    add_generation_prompt: bool = True,
) -> str:
    """Render a chat template (by default with a generation prompt), as transformers does."""
    from jinja2.exceptions import TemplateError

    try:
        return _compile(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=_token_text(tokenizer_config.get("bos_token")),
            eos_token=_token_text(tokenizer_config.get("eos_token")),
        )
    except TemplateError as exc:
        raise InvalidSpec("messages", f"the model's chat template refused them: {exc}") from exc
