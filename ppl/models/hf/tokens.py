"""The exact bytes of every token of a HuggingFace tokenizer (`token_bytes_of`).

The `LanguageModel` protocol speaks of tokens as byte strings, so that texts are assembled byte
by byte (a token may hold part of a UTF-8 character) and constraints match bytes. Tokenizers
spell a token's bytes in one of two ways: byte-level BPE vocabularies (GPT-2, Qwen, SmolLM)
write every byte as one printable character of a fixed alphabet; SentencePiece-style ones
(Llama 2, Mistral) write a space as "▁" and a byte without a piece of its own as "<0xE2>".
The tokenizer's serialised decoder and pre-tokenizer say which; added tokens are their text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2 style) as character -> byte.

    Byte-level vocabularies spell every byte as one printable character: the printable,
    non-space Latin-1 bytes stand for themselves and the remaining 68 bytes are given the code
    points 256, 257, ... in byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table: dict[str, int] = {}
    shifted = 256
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(shifted)] = b
            shifted += 1
    return table


def _component_types(node: Any) -> Iterator[str]:
    """Every `"type"` named in a serialised tokenizers component (nested sequences included)."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for value in node.values():
            yield from _component_types(value)
    elif isinstance(node, list):
        for value in node:
            yield from _component_types(value)


def _vocab_style(tokenizer: Any) -> str:
    """How the tokenizer spells bytes in its token strings: "byte_level" or "sentencepiece"."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # the decoder says how token strings become text; the pre-tokenizer how text was split.
        # Each component's own JSON (a few hundred bytes), not the whole tokenizer's (with its
        # vocabulary and merges: 0.3 s to parse for a 49k vocabulary)
        try:
            parts = [
                None if c is None else json.loads(c.__getstate__())
                for c in (backend.decoder, backend.pre_tokenizer)
            ]
        except (AttributeError, TypeError, ValueError):
            spec = json.loads(backend.to_str())
            parts = [spec.get("decoder"), spec.get("pre_tokenizer")]
        types = {t for part in parts for t in _component_types(part)}
        return "byte_level" if "ByteLevel" in types else "sentencepiece"
    if hasattr(tokenizer, "byte_decoder") or hasattr(tokenizer, "byte_encoder"):
        return "byte_level"  # slow GPT-2 style tokenizers
    return "sentencepiece"


def _sentencepiece_piece_bytes(piece: str) -> bytes:
    """Bytes of a SentencePiece-style token: "▁" is a space, "<0xE2>" a byte-fallback byte."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode()


def token_bytes_of(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """The exact bytes of every token id below `vocab_size` (ids the tokenizer lacks: b"").

    Added tokens (special ones such as `<|im_end|>` included) are their text's UTF-8 bytes.
    """
    style = _vocab_style(tokenizer)
    alphabet = _byte_level_alphabet() if style == "byte_level" else {}
    added = {
        int(i): str(getattr(tok, "content", tok))
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
    }
    n = min(vocab_size, len(tokenizer))
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out: list[bytes] = [b""] * vocab_size
    for i, piece in enumerate(pieces):
        if i in added:
            out[i] = added[i].encode()
        elif piece is None:
            continue
        elif style == "byte_level":
            try:
                out[i] = bytes(alphabet[ch] for ch in piece)
            except KeyError:  # not a byte-level spelling (should not happen): take the text
                out[i] = piece.encode()
        else:
            out[i] = _sentencepiece_piece_bytes(piece)
    return out
