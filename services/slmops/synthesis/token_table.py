"""Token ids for the token text an OpenAI-compatible teacher returns.

An endpoint gives each generated token (and its top-k alternatives) as text,
and often as its UTF-8 `bytes`. Given the teacher's tokenizer, `TokenTable`
maps those bytes back to the token's id, exactly, through a table built once
from the vocabulary:

- byte-level BPE vocabularies (GPT-2, Qwen, Llama 3, `slmops.testing.tiny`):
  each character of a token string stands for one byte, through the GPT-2
  byte-to-unicode alphabet;
- SentencePiece vocabularies: `▁` is a space and `<0xNN>` is the byte NN;
- added (special) tokens are their text.

Bytes that no token has, or that two tokens share, give None: never a wrong
id. vLLM's `--return-tokens-as-token-ids` form, `token_id:N`, gives N.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from slmops.core import artifacts, vocab
from slmops.core.errors import InvalidSpec

_ID_TOKEN = re.compile(r"^token_id:(\d+)$")


def _one(ids: list[int], byte_tokens: set[int]) -> int | None:
    """The one id with some bytes; a SentencePiece byte token only when no piece has them."""
    if len(ids) > 1:
        ids = [i for i in ids if i not in byte_tokens] or ids
    return ids[0] if len(ids) == 1 else None


class TokenTable:
    """Token id <-> bytes for one tokenizer (a transformers tokenizer object)."""

    def __init__(self, tokenizer: Any):
        vocab_ids: dict[str, int] = tokenizer.get_vocab()
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self.kind, self._bytes = vocab.token_bytes(vocab_ids, added)
        self.vocab_size = len(tokenizer)
        byte_tokens = {
            i for token, i in vocab_ids.items() if i not in added and vocab.BYTE_TOKEN.match(token)
        }
        candidates: dict[bytes, list[int]] = defaultdict(list)
        for i, data in self._bytes.items():
            candidates[data].append(i)
        self._ids = {data: _one(ids, byte_tokens) for data, ids in candidates.items()}

    def bytes_of(self, token_id: int) -> bytes | None:
        return self._bytes.get(token_id)

    def id_of(self, text: str, data: list[int] | bytes | None = None) -> int | None:
        """The id of a returned token: by its bytes when given, else by the UTF-8 of its text.

        Text holding U+FFFD without bytes is a token cut inside a character: its bytes are lost.
        """
        match = _ID_TOKEN.match(text)
        if match:
            token_id = int(match.group(1))
            return token_id if token_id < self.vocab_size else None
        if data is None:
            if "\ufffd" in text:
                return None
            data = text.encode()
        return self._ids.get(bytes(data))


def load_tokenizer(ref: str) -> Any:
    """A transformers tokenizer from a folder, a file:// URI or a hub id."""
    from transformers import AutoTokenizer

    if ref.startswith("file://"):
        return AutoTokenizer.from_pretrained(str(artifacts.local_path(ref)), local_files_only=True)
    return AutoTokenizer.from_pretrained(ref)


def load_token_table(ref: str, field: str = "spec.endpoint.tokenizer") -> TokenTable:
    """The TokenTable of the tokenizer at ref; InvalidSpec naming field when it cannot be built."""
    try:
        tokenizer = load_tokenizer(ref)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad folder or id
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidSpec(field, f"{ref!r}: the tokenizer cannot be loaded ({reason})") from None
    try:
        return TokenTable(tokenizer)
    except ValueError as exc:
        raise InvalidSpec(field, f"{ref!r}: its token ids cannot be mapped ({exc})") from None
