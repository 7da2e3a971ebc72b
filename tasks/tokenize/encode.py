"""Step 2: one clean part encoded into one raw token file per split, with SentencePiece's own
threads encoding one batch while this thread reads, chunks and writes the batches around it."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from lm.data import dtype_for_vocab
from lm.fileio import atomic_path, atomic_write_json, read_json, sha256_file, sha256_json
from lm.tokenizer import Tokenizer
from tasks.common import Progress
from tasks.tokenize.config import SPLITS, TokenizeConfig
from tasks.tokenize.parts import iter_docs
from tasks.tokenize.split import chunks_with_sizes, split_of

log = logging.getLogger("forja.tokenize")
ENCODE_BATCH_BYTES = 4 << 20  # text per sp.encode call: enough to keep every thread busy
PART_FORMAT = 1  # version of encode_part's work files; part of their reuse key


def _threads(config: TokenizeConfig) -> int:
    if config.num_threads:
        return config.num_threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _PartWriter:
    """Encodes chunks in batches and appends their tokens to one raw file per split.

    One batch is encoded on a background thread (SentencePiece releases the GIL and spreads it over
    `threads` threads) while this thread reads and chunks the next one and writes the previous one.
    """

    def __init__(self, sp: spm.SentencePieceProcessor, files: dict[str, Any], dtype: np.dtype, threads: int):
        self.sp, self.files, self.dtype, self.threads = sp, files, dtype, threads
        self.eos = sp.eos_id()
        self.texts: list[str] = []
        self.where: list[tuple[str, bool]] = []  # (split, ends a contiguous piece of its document)
        self.pending = 0
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forja-encode")
        self.in_flight: tuple[Future, list[tuple[str, bool]]] | None = None

    def add(self, text: str, split: str, ends: bool, nbytes: int) -> None:
        self.texts.append(text)
        self.where.append((split, ends))
        self.pending += nbytes
        if self.pending >= ENCODE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Start encoding the batch gathered so far; write the one before it."""
        self._write_in_flight()
        if self.texts:
            future = self.pool.submit(self.sp.encode, self.texts, num_threads=self.threads)
            self.in_flight = (future, self.where)
            self.texts, self.where, self.pending = [], [], 0

    def close(self) -> None:
        """Encode and write everything still pending."""
        self.flush()
        self._write_in_flight()

    def __enter__(self) -> _PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _write_in_flight(self) -> None:
        if self.in_flight is None:
            return
        future, where = self.in_flight
        self.in_flight = None
        by_split: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
        for seq, (split, ends) in zip(future.result(), where, strict=True):
            if ends:
                seq.append(self.eos)
            by_split[split].append(seq)
        for split, seqs in by_split.items():
            n = sum(map(len, seqs))
            if n:
                arr = np.fromiter(itertools.chain.from_iterable(seqs), dtype=self.dtype, count=n)
                arr.tofile(self.files[split])
                self.tokens[split] += n


def _reusable(record_path: Path, key: str) -> dict[str, Any] | None:
    """A previous encode_part result for the same input, if its files are all there."""
    if not record_path.is_file():
        return None
    try:
        rec = read_json(record_path)
    except (OSError, ValueError):
        return None
    if rec.get("key") != key:
        return None
    itemsize = np.dtype(rec["dtype"]).itemsize
    for info in rec["splits"].values():
        p = Path(info["path"])
        if not p.is_file() or p.stat().st_size != info["tokens"] * itemsize:
            return None
    return rec


def encode_part(
    part_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    config: TokenizeConfig,
) -> dict[str, Any]:
    """Encode one clean part into WORK/<part>.train.tok and WORK/<part>.val.tok (raw tokens).

    Each contiguous piece of a document in a split is followed by EOS. A finished part leaves a
    record (WORK/<part>.json, written last); a rerun with the same part, tokenizer and split
    settings returns it without encoding again. Returns that record: token, byte, document and
    segment (EOS) counts per split and the files' paths.
    """
    part_path, work_dir = Path(part_path), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(tokenizer_path)
    dtype = dtype_for_vocab(tok.vocab_size).newbyteorder("<")
    key = sha256_json(
        {
            "format": PART_FORMAT,
            "part_sha256": sha256_file(part_path),
            "tokenizer_sha256": tok.sha256,
            "val_fraction": config.val_fraction,
            "chunk_bytes": config.chunk_bytes,
        }
    )
    record_path = work_dir / f"{part_path.stem}.json"
    if (rec := _reusable(record_path, key)) is not None:
        log.info("%s: already encoded (%s); reusing it", part_path.name, record_path)
        return rec
    record_path.unlink(missing_ok=True)  # a record never describes files other than its own

    paths = {s: work_dir / f"{part_path.stem}.{s}.tok" for s in SPLITS}
    stats = {s: {"tokens": 0, "bytes": 0, "docs": 0, "segments": 0} for s in SPLITS}
    skipped: Counter = Counter()
    n_docs = n_chunks = 0
    progress = Progress(f"encode {part_path.name}", unit="docs", logger=log)
    with contextlib.ExitStack() as stack:
        # The ExitStack unwinds in reverse: the encoding thread stops, the files close, then they
        # are renamed into place (or, after an error, deleted).
        tmps = {s: stack.enter_context(atomic_path(paths[s])) for s in SPLITS}
        files = {s: stack.enter_context(open(tmps[s], "wb")) for s in SPLITS}
        writer = stack.enter_context(_PartWriter(tok.sp, files, dtype, _threads(config)))
        for doc_id, text in iter_docs(part_path, skipped):
            chunks = chunks_with_sizes(text, config.chunk_bytes)
            splits = [split_of(doc_id, i, config.val_fraction) for i in range(len(chunks))]
            doc_bytes = 0
            for i, ((chunk, nbytes), split) in enumerate(zip(chunks, splits, strict=True)):
                ends = i + 1 == len(chunks) or splits[i + 1] != split
                writer.add(chunk, split, ends, nbytes)
                stats[split]["bytes"] += nbytes
                stats[split]["segments"] += ends
                doc_bytes += nbytes
            for split in set(splits):
                stats[split]["docs"] += 1
            n_docs += 1
            n_chunks += len(chunks)
            progress.update(1, doc_bytes)
        writer.close()
    progress.close()
    rec = {
        "part": part_path.name,
        "key": key,
        "dtype": dtype.str,
        "docs": n_docs,
        "chunks": n_chunks,
        "skipped": dict(skipped),
        "splits": {s: {"path": str(paths[s]), **stats[s], "tokens": writer.tokens[s]} for s in SPLITS},
    }
    atomic_write_json(record_path, rec)
    return rec
