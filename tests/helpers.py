"""Test helpers: a real SentencePiece model and real token shards from a text file.

A stand-in for the tokenize stage (tasks/tokenize.py) while lm/ is tested on its own.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import sentencepiece as spm

from lm.data import FORMAT, MANIFEST, TOKENIZER, write_shard
from lm.fileio import atomic_write_json, sha256_file

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def shakespeare_text(n_bytes: int | None = None) -> str:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    return text if n_bytes is None else text[:n_bytes]


def make_token_dir(text: str, out: Path, vocab_size: int = 256, val_fraction: float = 0.1) -> Path:
    """Train SentencePiece on `text`, cut it at blank lines into documents, split the last
    `val_fraction` off as validation, and write one shard per split with a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    (out / TOKENIZER).write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(out / TOKENIZER))
    docs = [d for d in text.split("\n\n") if d.strip()]
    cut = max(1, int(len(docs) * (1 - val_fraction)))
    splits = {}
    for name, part in (("train", docs[:cut]), ("val", docs[cut:])):
        ids = [t for ids in sp.encode(part) for t in (*ids, sp.eos_id())]
        path = f"{name}-00000.bin"
        write_shard(out / path, np.array(ids, dtype=np.int64), len(part), sp.get_piece_size())
        nbytes = sum(len(d.encode()) for d in part)
        splits[name] = {
            "tokens": len(ids),
            "bytes": nbytes,
            "docs": len(part),
            "shards": [{"path": path, "tokens": len(ids), "sha256": sha256_file(out / path)}],
        }
    atomic_write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "tokenizer": TOKENIZER,
            "tokenizer_sha256": sha256_file(out / TOKENIZER),
            "vocab_size": sp.get_piece_size(),
            "eos_id": sp.eos_id(),
            "splits": splits,
        },
    )
    return out
