"""The bytes behind each token id of a vocabulary.

OpenAI-compatible log-probabilities carry each token's UTF-8 `bytes`; given
the tokenizer, those bytes name the token id exactly. This module builds the
id -> bytes table from a vocabulary:

- byte-level BPE vocabularies (GPT-2, Qwen, Llama 3, `slmops.testing.tiny`):
  each character of a token string stands for one byte, through the GPT-2
  byte-to-unicode alphabet;
- SentencePiece vocabularies: `▁` is a space and `<0xNN>` is the byte NN;
- added (special) tokens are their text.

The predictor uses it to answer `bytes`; synthesis uses it to map a teacher's
answer back to ids.
"""

from __future__ import annotations

import re
from functools import lru_cache

BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
SPACE = "\u2581"  # SentencePiece's word-boundary mark


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet, character -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are
    mapped, in order, to the characters from U+0100 up.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    chars = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in chars.items()}


def vocabulary_kind(tokens: list[str]) -> str:
    """'byte_level' or 'sentencepiece' for the regular (not added) tokens; else ValueError."""
    alphabet = byte_decoder()
    chars = {c for t in tokens for c in t}
    if chars <= alphabet.keys() and any(ord(c) > 255 for c in chars):
        return "byte_level"
    if any(SPACE in t or BYTE_TOKEN.match(t) for t in tokens):
        return "sentencepiece"
    raise ValueError("the vocabulary is neither byte-level BPE nor SentencePiece")


def _sentencepiece_bytes(token: str) -> bytes:
    match = BYTE_TOKEN.match(token)
    return bytes([int(match.group(1), 16)]) if match else token.replace(SPACE, " ").encode()


def token_bytes(vocab: dict[str, int], added: dict[int, str]) -> tuple[str, dict[int, bytes]]:
    """(vocabulary kind, {id: bytes}) for a vocabulary {token: id} and its added tokens {id: text}."""
    regular = {token: i for token, i in vocab.items() if i not in added}
    kind = vocabulary_kind(list(regular))
    table: dict[int, bytes] = {i: text.encode() for i, text in added.items()}
    alphabet = byte_decoder()
    for token, i in regular.items():
        if kind == "byte_level":
            table[i] = bytes(alphabet[c] for c in token)
        else:
            table[i] = _sentencepiece_bytes(token)
    return kind, table


def table_from_tokenizer_json(path: str) -> dict[int, bytes]:
    """{id: bytes} of a `tokenizer.json` (the tokenizers library, no transformers needed)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
    return token_bytes(tokenizer.get_vocab(with_added_tokens=True), added)[1]
