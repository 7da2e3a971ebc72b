"""The tokenize stage's settings (`TokenizeConfig`) and the names fixed across its modules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

STAGE = "tokenize"
UPSTREAM = "clean"
SPLITS = ("train", "val")
NEWLINE = "\n"
SPECIAL_PIECES = ("<unk>", "<s>", "</s>")


class TokenizeConfig(BaseModel):
    """How to tokenize: the SentencePiece model to train (or reuse), the split and the shards."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: Path | None = Field(
        None,
        description="Reuse this SentencePiece .model file instead of training one (e.g. the "
        "tokenizer.model of an earlier token folder, to continue training a model on new data). "
        "The tokenizer-training fields below are then ignored.",
    )
    model_type: Literal["bpe", "unigram"] = Field("bpe", description="SentencePiece algorithm.")
    vocab_size: int = Field(
        4096, ge=8, le=2**31 - 1, description="Number of pieces, including <unk>, <s>, </s> and newline."
    )
    byte_fallback: bool = Field(
        True, description="Spell characters outside the vocabulary as UTF-8 byte pieces instead of <unk>."
    )
    character_coverage: float = Field(
        0.9995,
        gt=0.0,
        le=1.0,
        description="Share of the sample's characters that get pieces of their own; the rarest rest "
        "become bytes (byte_fallback) or <unk>.",
    )
    user_defined_symbols: list[str] = Field(
        default_factory=list,
        description='Strings always kept as one piece (e.g. "<|im_start|>"); newline is always one.',
    )
    max_sentence_length: int = Field(
        4192,
        ge=16,
        description="Longest training line in UTF-8 bytes; longer lines are cut into pieces (and counted).",
    )
    sample_bytes: int = Field(
        20_000_000,
        ge=1,
        description="Bytes of text sampled from the train split to train the tokenizer on (bounds memory).",
    )
    seed: int = Field(0, ge=0, description="Chooses which chunks form the tokenizer's training sample.")
    train_threads: int = Field(
        4,
        ge=1,
        description="Threads for training the tokenizer. A unigram model depends on it, so it is a "
        "fixed number (not 'all cores') to keep tokenizer.model reproducible across machines.",
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of chunks (by doc_id hash) held out for validation."
    )
    chunk_bytes: int = Field(
        8192,
        ge=64,
        description="Documents longer than this (UTF-8 bytes) are cut at blank lines into chunks that "
        "are split into train/val one by one. Keep it fixed: changing it moves chunks between splits.",
    )
    shard_tokens: int = Field(
        50_000_000, ge=1024, description="Most tokens per shard file (the shards of a split are equal-sized)."
    )
    num_threads: int = Field(
        0, ge=0, description="Encoding threads; 0 = all cores. Does not change the output."
    )

    @field_validator("user_defined_symbols")
    @classmethod
    def _check_symbols(cls, value: list[str]) -> list[str]:
        for s in value:
            if not s:
                raise ValueError("user_defined_symbols: remove the empty string")
            if s in SPECIAL_PIECES:
                raise ValueError(f"user_defined_symbols: {s!r} is a special piece SentencePiece adds itself")
        dupes = sorted(s for s, n in Counter(value).items() if n > 1)
        if dupes:
            raise ValueError(f"user_defined_symbols: {dupes} appear more than once; list each symbol once")
        return value

    def trainer_args(self) -> dict[str, Any]:
        """SentencePiece trainer options (the fixed ones are explained in tasks/tokenize/__init__.py)."""
        return {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "byte_fallback": self.byte_fallback,
            "character_coverage": self.character_coverage,
            "user_defined_symbols": [NEWLINE, *(s for s in self.user_defined_symbols if s != NEWLINE)],
            "max_sentence_length": self.max_sentence_length,
            "num_threads": self.train_threads,
            "unk_id": 0,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": -1,  # no pad: lm packs documents into windows and never pads
            "normalization_rule_name": "identity",
            "remove_extra_whitespaces": False,
            "add_dummy_prefix": False,
            "allow_whitespace_only_pieces": True,
            "hard_vocab_limit": True,
            "input_sentence_size": 0,  # we sample ourselves (seeded, streamed)
            "shuffle_input_sentence": False,
            "minloglevel": 2,
        }
