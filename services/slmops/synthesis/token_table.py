"""Token ids for the token text an OpenAI-compatible teacher returns.

An endpoint gives each generated token (and its top-k alternatives) as text,
and often as its UTF-8 `bytes`. Given the teacher's tokenizer, `TokenTable`
maps those bytes back to the token's id, exactly, through a table built once
from the vocabulary:

- byte-level BPE vocabularies (GPT-2, Qwen, Llama 3, `slmops.models.tiny`):
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

from slmops.core import artifacts
from slmops.core.errors import InvalidSpec

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_ID_TOKEN = re.compile(r"^token_id:(\d+)$")
_SPACE = "\u2581"  # SentencePiece's word-boundary mark


def byte_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet, character -> byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def vocabulary_kind(tokens: list[str], alphabet: dict[str, int]) -> str:
    """'byte_level' or 'sentencepiece' for the regular (not added) tokens; else ValueError."""
    chars = {c for t in tokens for c in t}
    if chars <= alphabet.keys() and any(ord(c) > 255 for c in chars):
        return "byte_level"
    if any(_SPACE in t or _BYTE_TOKEN.match(t) for t in tokens):
        return "sentencepiece"
    raise ValueError("the vocabulary is neither byte-level BPE nor SentencePiece")


def _sentencepiece_bytes(token: str) -> bytes:
    match = _BYTE_TOKEN.match(token)
    return bytes([int(match.group(1), 16)]) if match else token.replace(_SPACE, " ").encode()


def _one(ids: list[int], byte_tokens: set[int]) -> int | None:
    """The one id with some bytes; a SentencePiece byte token only when no piece has them."""
    if len(ids) > 1:
        ids = [i for i in ids if i not in byte_tokens] or ids
    return ids[0] if len(ids) == 1 else None


class TokenTable:
    """Token id <-> bytes for one tokenizer (a transformers tokenizer object)."""

    def __init__(self, tokenizer: Any):
        vocab: dict[str, int] = tokenizer.get_vocab()
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        regular = {token: i for token, i in vocab.items() if i not in added}
        alphabet = byte_decoder()
        self.kind = vocabulary_kind(list(regular), alphabet)
        self.vocab_size = len(tokenizer)
        self._bytes: dict[int, bytes] = {i: text.encode() for i, text in added.items()}
        for token, i in regular.items():
            if self.kind == "byte_level":
                self._bytes[i] = bytes(alphabet[c] for c in token)
            else:
                self._bytes[i] = _sentencepiece_bytes(token)
        byte_tokens = {i for token, i in regular.items() if _BYTE_TOKEN.match(token)}
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


def load_token_table(ref: str, field: str = "spec.teacher.endpoint.tokenizer") -> TokenTable:
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
