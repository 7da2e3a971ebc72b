"""A thin wrapper over a SentencePiece model: encode, decode, special ids and the file's digest."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import sentencepiece as spm

from lm.errors import DataError
from lm.fileio import sha256_file


class Tokenizer:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"tokenizer model {self.path} not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise DataError(f"{self.path} is not a SentencePiece model: {e}") from e
        if self.sp.eos_id() < 0:
            raise DataError(f"tokenizer {self.path} has no EOS piece; Forja separates documents with EOS")

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])
