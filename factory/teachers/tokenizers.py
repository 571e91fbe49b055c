"""Tokenizer identity: the hash a KD trainer compares before trusting stored token ids."""

from __future__ import annotations

import hashlib
from typing import Any

from factory.schema import canonical_json


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary (token -> id) and special tokens.

    Two tokenizers with the same hash map text to the same ids, so logprobs stored
    against one are valid targets for a student using the other.
    """
    vocab = tokenizer.get_vocab()
    specials = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    payload = canonical_json({"vocab": sorted(vocab.items(), key=lambda item: item[1]), "specials": specials})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
