"""Tokenizers for models that come without one."""
from __future__ import annotations


class ByteTokenizer:
    """For `random` models only: UTF-8 bytes folded into ids 1..V-1, id 0 is EOS."""

    bos_token_id = None
    eos_token_id = 0

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + b % (self.vocab_size - 1) for b in text.encode("utf-8")]
