"""Recover token ids from the token strings (and bytes) an OpenAI-compatible server returns.

Servers report each sampled and top-k token as text (plus its UTF-8 bytes); a KD trainer
needs ids. vLLM can send ids directly (`return_tokens_as_token_ids` -> "token_id:123");
otherwise each token's bytes are looked up in the configured tokenizer's vocabulary.
"""

from __future__ import annotations

from functools import lru_cache

TOKEN_ID_PREFIX = "token_id:"


def parse_token_id(token: str) -> int | None:
    """The id in a vLLM `token_id:123` token string, else None."""
    if token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX) :])
        except ValueError:
            return None
    return None


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-ins byte-level BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, shift = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


class TokenBytesIndex:
    """Maps a token's exact bytes to its id in one tokenizer's vocabulary."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        vocab: dict[str, int] = tokenizer.get_vocab()
        specials = set(getattr(tokenizer, "all_special_tokens", []))
        decoder = _byte_decoder()
        ordinary = [token for token in vocab if token not in specials]
        byte_level = bool(ordinary) and sum(all(ch in decoder for ch in t) for t in ordinary) >= 0.99 * len(ordinary)
        by_bytes: dict[bytes, int | None] = {}
        for token, token_id in vocab.items():
            raw = self._token_bytes(token, token in specials, byte_level, decoder)
            # Two ids with the same bytes cannot be told apart from text: mark ambiguous.
            by_bytes[raw] = None if raw in by_bytes and by_bytes[raw] != token_id else token_id
        self._by_bytes = by_bytes

    @staticmethod
    def _token_bytes(token: str, special: bool, byte_level: bool, decoder: dict[str, int]) -> bytes:
        if special:
            return token.encode("utf-8")
        if byte_level and all(ch in decoder for ch in token):
            return bytes(decoder[ch] for ch in token)
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # SentencePiece byte fallback
            return bytes([int(token[3:5], 16)])
        return token.replace("\u2581", " ").encode("utf-8")  # SentencePiece word boundary

    def lookup(self, text: str, raw: list[int] | None = None) -> int | None:
        """The id of one token given its text and, when the server sent them, its bytes."""
        key = bytes(raw) if raw is not None else text.encode("utf-8")
        token_id = self._by_bytes.get(key)
        if token_id is not None:
            return token_id
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None
