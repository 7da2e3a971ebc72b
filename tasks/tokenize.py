"""Tokenize: the clean corpus in, a token folder out (a SentencePiece model and token shards).

    IN/manifest.json, IN/part-*.parquet (doc_id, text, ...)    the clean stage's output
    OUT/manifest.json                                         stage manifest + token-folder fields
    OUT/tokenizer.model                                       the SentencePiece model
    OUT/train-00000.bin ... OUT/val-00000.bin ...             token shards (lm/data.py format)

Three steps, each callable on its own so an orchestrator can map the middle one over the parts:

1. `train_tokenizer` (whole corpus) trains SentencePiece on a bounded, seeded sample streamed from
   the parts (or `reuse_tokenizer` copies an existing model, to continue training on new data).
2. `encode_part` (one per input part) encodes that part into one raw token file per split.
3. `finalize` (whole corpus) cuts those files into shards of at most `shard_tokens` tokens and
   writes the manifest last. `run_tokenize` composes the three and publishes the folder atomically.

Design choices, and why:

- Train/val split by a hash of (doc_id, chunk index), never by position: a document keeps its split
  when new data arrives, so a model that continues training never trains on what it was validated on.
- Documents longer than `chunk_bytes` are cut into chunks at blank lines (then lines, then bytes)
  and each chunk is split on its own: a corpus of one big file still gets a validation split.
  Chunking depends only on the text, so keep `chunk_bytes` fixed to keep the split stable.
- EOS ends every contiguous piece of a document in a split: a whole document, or a run of its
  chunks cut short where a neighbouring chunk went to the other split. It marks "the text does
  not continue here", both between documents and across holes left by the split.
- The tokenizer round-trips text exactly (identity normalisation, whitespace kept, no dummy
  prefix) and has "\\n" as a piece of its own: a language model must be able to write newlines,
  and because SentencePiece segments the text between user-defined symbols independently,
  encoding chunks cut after a newline gives the same tokens as encoding the whole document.
- SentencePiece silently skips training lines longer than `max_sentence_length`; we cut such lines
  into pieces, count them and warn instead.
- Encoding uses SentencePiece's own threads (`encode(list, num_threads=...)` releases the GIL),
  one batch in flight while this thread reads, chunks and writes the batches around it.
  `num_threads` never changes the output; `train_threads` can (unigram sums in per-thread order),
  so it is a fixed number rather than "all cores", and tokenizer.model is reproducible across machines.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sentencepiece as spm
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lm.data import FORMAT, TOKENIZER, dtype_for_vocab, write_shard
from lm.errors import DataError
from lm.fileio import (
    TMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    read_json,
    sha256_file,
    sha256_json,
)
from lm.tokenizer import Tokenizer
from tasks.common import (
    MANIFEST,
    Progress,
    StageError,
    config_dict,
    make_manifest,
    output_record,
    read_manifest,
    verify_outputs,
    write_manifest,
)

log = logging.getLogger("forja.tokenize")

STAGE = "tokenize"
UPSTREAM = "clean"
SPLITS = ("train", "val")
NEWLINE = "\n"
SPECIAL_PIECES = ("<unk>", "<s>", "</s>")
ROW_BATCH = 256  # Parquet rows read at a time: bounded memory even for large documents
ENCODE_BATCH_BYTES = 4 << 20  # text per sp.encode call: enough to keep every thread busy
PART_FORMAT = 1  # version of encode_part's work files; part of their reuse key


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
        """SentencePiece trainer options (see the module docstring for the fixed ones)."""
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


# --------------------------------------------------------------------------- chunks and splits

# Cut points, as byte offsets: after a run of blank lines (a paragraph's end), after a newline.
# Blank means empty or ASCII whitespace only; working on bytes keeps offsets and sizes in UTF-8 bytes.
_PARAGRAPH_END = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_LINE_END = re.compile(rb"\n")


def _char_cuts(data: bytes, start: int, stop: int, limit: int) -> Iterator[int]:
    """Ends of pieces of data[start:stop] of at most `limit` bytes, never inside a UTF-8 character."""
    pos = start
    while pos < stop:
        end = min(pos + limit, stop)
        while end < stop and (data[end] & 0xC0) == 0x80:  # a continuation byte: back off
            end -= 1
        yield end
        pos = end


def _cuts(data: bytes, start: int, stop: int, limit: int, level: int = 0) -> Iterator[int]:
    """Ends of pieces of data[start:stop] of at most `limit` bytes, packed greedily from paragraphs
    (level 0); a paragraph longer than `limit` is packed from its lines, a line from its characters."""
    if level == 2:
        yield from _char_cuts(data, start, stop, limit)
        return
    pattern = _PARAGRAPH_END if level == 0 else _LINE_END
    ends = [m.end() for m in pattern.finditer(data, start, stop)]
    if not ends or ends[-1] != stop:
        ends.append(stop)
    pos = start
    while pos < stop:
        i = bisect.bisect_right(ends, pos + limit) - 1  # the furthest cut that fits
        if i >= 0 and ends[i] > pos:
            yield ends[i]
            pos = ends[i]
        else:  # the next piece alone is longer than limit: cut it one level down
            nxt = ends[bisect.bisect_right(ends, pos)]
            yield from _cuts(data, pos, nxt, limit, level + 1)
            pos = nxt


def _chunks(text: str, chunk_bytes: int) -> list[tuple[str, int]]:
    """(chunk, its UTF-8 size) for chunk_text."""
    data = text.encode("utf-8")
    if len(data) <= chunk_bytes:
        return [(text, len(data))] if text else []
    out, pos = [], 0
    for end in _cuts(data, 0, len(data), chunk_bytes):
        out.append((data[pos:end].decode("utf-8"), end - pos))
        pos = end
    return out


def chunk_text(text: str, chunk_bytes: int) -> list[str]:
    """Cut a document into chunks of at most `chunk_bytes` UTF-8 bytes that join back to it exactly.

    Chunks end after blank lines (paragraph ends) where possible, after a line inside a paragraph
    longer than `chunk_bytes`, and at a character boundary inside a line longer than that. The cuts
    depend on the text alone.
    """
    return [chunk for chunk, _ in _chunks(text, chunk_bytes)]


def _cut_line(line: str, limit: int) -> list[str]:
    """A line as pieces of at most `limit` UTF-8 bytes (whole characters)."""
    data = line.encode("utf-8")
    out, pos = [], 0
    for end in _char_cuts(data, 0, len(data), limit):
        out.append(data[pos:end].decode("utf-8"))
        pos = end
    return out


def _hash_unit(key: str, person: bytes) -> float:
    """A uniform number in [0, 1) from a string: stable across runs, machines and Python versions."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(doc_id: str, chunk_index: int, val_fraction: float) -> str:
    """'val' or 'train' for one chunk, from a hash of (doc_id, chunk index) alone.

    A chunk's split never depends on other documents, so adding data moves nothing; raising
    `val_fraction` only moves chunks from train to val.
    """
    return "val" if _hash_unit(f"{doc_id}\x00{chunk_index}", b"forja-split") < val_fraction else "train"


# --------------------------------------------------------------------------- reading the clean output


_PART_NAME = re.compile(r"part-[^/]*\.parquet")  # the clean stage's documents (not, say, its rejects)


def list_parts(in_dir: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a finished clean output, checked against their sha256 in its manifest."""
    in_dir = Path(in_dir)
    manifest = read_manifest(in_dir, UPSTREAM)
    verify_outputs(in_dir, manifest)
    return sorted(in_dir / o["path"] for o in manifest["outputs"] if _PART_NAME.fullmatch(o["path"]))


def _open_part(path: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise StageError(f"{path} is not a readable Parquet file ({e}); re-run the clean stage") from e
    names = set(pf.schema_arrow.names)
    for column in ("doc_id", "text"):
        if column not in names:
            raise StageError(
                f"{path} has no {column!r} column (columns: {sorted(names)}); "
                "tokenize reads the clean stage's output: re-run `forja clean`"
            )
    return pf


def _iter_docs(path: Path, skipped: Counter, warn: bool = True) -> Iterator[tuple[str, str]]:
    """(doc_id, text) of each usable row; rows without text or doc_id are counted (and logged)."""
    pf = _open_part(path)
    row = 0
    bad_rows: dict[str, list[int]] = {}
    for batch in pf.iter_batches(batch_size=ROW_BATCH, columns=["doc_id", "text"]):
        ids = batch.column("doc_id").to_pylist()
        texts = batch.column("text").to_pylist()
        for doc_id, text in zip(ids, texts, strict=True):
            reason = "empty_text" if not text else "missing_doc_id" if not doc_id else None
            if reason:
                skipped[reason] += 1
                bad_rows.setdefault(reason, []).append(row)
            else:
                yield str(doc_id), text
            row += 1
    for reason, rows in bad_rows.items() if warn else ():
        log.warning(
            "%s: skipped %d rows (%s), e.g. rows %s; the clean stage should not emit them",
            path.name,
            len(rows),
            reason,
            rows[:5],
        )


def _corpus_bytes(parts: list[Path]) -> int:
    """UTF-8 bytes of text in the parts, from the n_bytes column when there is one (cheap)."""
    total = 0
    for path in parts:
        pf = _open_part(path)
        column = "n_bytes" if "n_bytes" in pf.schema_arrow.names else "text"
        for batch in pf.iter_batches(batch_size=8192, columns=[column]):
            values = batch.column(0) if column == "n_bytes" else pc.binary_length(batch.column(0))
            total += int(pc.sum(values).as_py() or 0)
    return total


# --------------------------------------------------------------------------- step 1: the tokenizer


class _Sample:
    """The tokenizer's training lines, streamed: a seeded, hash-chosen share of the train chunks.

    Stops after `sample_bytes`. Lines longer than `max_sentence_length` bytes are cut into pieces
    (SentencePiece would skip them silently) and counted. An exception raised while reading is kept
    and re-raised after training, because SentencePiece wraps it in an opaque RuntimeError.
    """

    def __init__(self, parts: list[Path], config: TokenizeConfig, keep: float, expected: int):
        self.parts, self.config, self.keep, self.expected = parts, config, keep, expected
        self.bytes = self.lines = self.long_lines = self.chunks = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._lines()
        except Exception as e:
            self.error = e

    def _lines(self) -> Iterator[str]:
        cfg = self.config
        limit = cfg.max_sentence_length
        progress = Progress("tokenizer sample", total=self.expected, unit="bytes", logger=log)
        skipped: Counter = Counter()
        for path in self.parts:
            for doc_id, text in _iter_docs(path, skipped, warn=False):  # encode_part warns
                for i, chunk in enumerate(chunk_text(text, cfg.chunk_bytes)):
                    if split_of(doc_id, i, cfg.val_fraction) != "train":
                        continue
                    if (
                        self.keep < 1.0
                        and _hash_unit(f"{cfg.seed}\x00{doc_id}\x00{i}", b"forja-sample") >= self.keep
                    ):
                        continue
                    self.chunks += 1
                    for line in chunk.split(NEWLINE):
                        if not line:
                            continue
                        n = len(line) if line.isascii() else len(line.encode("utf-8"))
                        pieces = [line] if n <= limit else _cut_line(line, limit)
                        self.long_lines += n > limit
                        for piece in pieces:
                            self.lines += 1
                            yield piece
                        self.bytes += n + 1  # + the newline
                        progress.update(n + 1, n + 1)
                        if self.bytes >= cfg.sample_bytes:
                            progress.close()
                            return
        progress.close()


def _explain_training_error(e: RuntimeError) -> StageError:
    """SentencePiece's error, restated as what to change."""
    msg = str(e)
    if m := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg):
        return StageError(
            f"vocab_size={m[1]} is more than this corpus supports: SentencePiece can make at most {m[2]} "
            f"pieces from the tokenizer's sample; lower vocab_size to {m[2]} or less "
            "(or raise sample_bytes if the corpus is larger than the sample)"
        )
    if m := re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg):
        return StageError(
            f"vocab_size={m[1]} is too small: the sample's characters and special pieces need {m[2]}; "
            "raise vocab_size or lower character_coverage"
        )
    return StageError(
        f"SentencePiece could not train a tokenizer: {msg.strip()}; check model_type, vocab_size, "
        "character_coverage and user_defined_symbols"
    )


def _tokenizer_info(path: Path, trained: bool, source: Path | None = None, **sample: int) -> dict[str, Any]:
    tok = Tokenizer(path)
    return {
        "path": str(path),
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "trained": trained,
        "source": str(source) if source else None,
        "sample_bytes": sample.get("sample_bytes", 0),
        "sample_lines": sample.get("sample_lines", 0),
        "long_lines": sample.get("long_lines", 0),
    }


def train_tokenizer(
    in_dir: str | os.PathLike, out: str | os.PathLike, config: TokenizeConfig
) -> dict[str, Any]:
    """Train SentencePiece on a bounded, seeded sample of the corpus; write OUT/tokenizer.model.

    The model is a pure function of the sampled text and the config: the same input and config give
    the same bytes. Returns the tokenizer record that `finalize` takes.
    """
    in_dir, out = Path(in_dir), Path(out)
    parts = list_parts(in_dir)
    total = _corpus_bytes(parts)
    if total == 0:
        raise StageError(f"{in_dir} holds no text to train a tokenizer on; check the clean stage's output")
    train_bytes = total * (1.0 - config.val_fraction)  # an estimate: the split is by chunk
    keep = min(1.0, config.sample_bytes / max(1.0, train_bytes))
    sample = _Sample(parts, config, keep, expected=int(min(config.sample_bytes, train_bytes)))
    log.info(
        "training a %s tokenizer (vocab %d) on up to %.1f MB of %.1f MB",
        config.model_type,
        config.vocab_size,
        config.sample_bytes / 1e6,
        total / 1e6,
    )
    t0 = time.perf_counter()
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, **config.trainer_args()
        )
    except RuntimeError as e:
        if sample.error is not None:
            raise sample.error from None
        if sample.lines == 0:
            raise StageError(f"{in_dir}: the train split holds no text to train a tokenizer on") from e
        raise _explain_training_error(e) from e
    if sample.error is not None:
        raise sample.error
    if sample.long_lines:
        log.warning(
            "%d lines of the tokenizer sample were longer than max_sentence_length=%d bytes and were fed "
            "cut into pieces (SentencePiece would have skipped them); raise max_sentence_length to keep "
            "them whole",
            sample.long_lines,
            config.max_sentence_length,
        )
    path = out / TOKENIZER
    atomic_write_bytes(path, model.getvalue())
    log.info(
        "trained the tokenizer on %s lines (%.1f MB) in %.1fs",
        f"{sample.lines:,}",
        sample.bytes / 1e6,
        time.perf_counter() - t0,
    )
    return _tokenizer_info(
        path, True, sample_bytes=sample.bytes, sample_lines=sample.lines, long_lines=sample.long_lines
    )


def reuse_tokenizer(source: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Copy an existing SentencePiece model to OUT/tokenizer.model (instead of training one)."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise StageError(
            f"tokenizer={source} is not a file; give the path of a SentencePiece .model file (e.g. the "
            "tokenizer.model of an earlier token folder), or leave tokenizer empty to train one"
        )
    try:
        Tokenizer(source)
    except DataError as e:
        raise StageError(f"tokenizer={source}: {e}") from e
    path = out / TOKENIZER
    atomic_write_bytes(path, source.read_bytes())
    return _tokenizer_info(path, False, source)


# --------------------------------------------------------------------------- step 2: encode one part


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
        for doc_id, text in _iter_docs(part_path, skipped):
            chunks = _chunks(text, config.chunk_bytes)
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


# --------------------------------------------------------------------------- step 3: shards + manifest


def _recut(sources: list[tuple[Path, int]], dtype: np.dtype, sizes: list[int]) -> Iterator[np.ndarray]:
    """The sources' tokens, concatenated in order and re-cut into arrays of the given sizes."""
    for path, n in sources:
        if not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            raise DataError(f"{path} should hold {n} tokens but is missing or has another size; re-run")
    pending = iter(sizes)
    if (want := next(pending, None)) is None:
        return
    buf, filled = np.empty(want, dtype=dtype), 0
    for path, _ in sources:
        with open(path, "rb") as f:
            while True:
                got = np.fromfile(f, dtype=dtype, count=want - filled)
                buf[filled : filled + got.size] = got
                filled += got.size
                if filled < want:
                    break  # this file is exhausted: go on with the next one
                yield buf
                if (want := next(pending, None)) is None:
                    return
                buf, filled = np.empty(want, dtype=dtype), 0


def _write_split(
    split: str, sources: list[tuple[Path, int]], out: Path, vocab_size: int, eos: int, shard_tokens: int
) -> list[dict[str, Any]]:
    """Equal-sized shards of at most `shard_tokens` tokens; memory is one shard."""
    total = sum(n for _, n in sources)
    n_shards = math.ceil(total / shard_tokens)
    bounds = [round(i * total / n_shards) for i in range(n_shards + 1)] if n_shards else [0]
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    dtype = dtype_for_vocab(vocab_size).newbyteorder("<")
    shards = []
    for i, tokens in enumerate(_recut(sources, dtype, sizes)):
        path = out / f"{split}-{i:05d}.bin"
        write_shard(path, tokens, int(np.count_nonzero(tokens == eos)), vocab_size)
        shards.append({**output_record(path, out), "tokens": int(tokens.size)})
    if len(shards) != n_shards:
        raise DataError(f"the {split} token files hold fewer tokens than their records say; re-run")
    return shards


def finalize(
    in_dir: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: dict[str, Any],
    parts: list[dict[str, Any]],
    config: TokenizeConfig,
) -> dict[str, Any]:
    """Cut the parts' token files into OUT/<split>-NNNNN.bin shards and write OUT/manifest.json last.

    `tokenizer` is what train_tokenizer / reuse_tokenizer returned (its model must be OUT/tokenizer.model),
    `parts` what encode_part returned, in part order. Returns the manifest.
    """
    in_dir, out = Path(in_dir), Path(out)
    upstream = read_manifest(in_dir, UPSTREAM)["digest"]
    model = out / TOKENIZER
    if not model.is_file() or sha256_file(model) != tokenizer["sha256"]:
        raise StageError(f"{model} is missing or is not the tokenizer the parts were encoded with; re-run")
    dtype = dtype_for_vocab(tokenizer["vocab_size"]).newbyteorder("<")
    for p in parts:
        if p["dtype"] != dtype.str:
            raise StageError(f"part {p['part']} was encoded with another tokenizer; re-run encode_part")
    outputs = [output_record(model, out)]
    splits: dict[str, Any] = {}
    for split in SPLITS:
        infos = [p["splits"][split] for p in parts]
        shards = _write_split(
            split,
            [(Path(i["path"]), i["tokens"]) for i in infos],
            out,
            tokenizer["vocab_size"],
            tokenizer["eos_id"],
            config.shard_tokens,
        )
        outputs += shards
        splits[split] = {
            "tokens": sum(i["tokens"] for i in infos),
            "bytes": sum(i["bytes"] for i in infos),
            "docs": sum(i["docs"] for i in infos),
            "segments": sum(i["segments"] for i in infos),
            "shards": [{"path": s["path"], "tokens": s["tokens"], "sha256": s["sha256"]} for s in shards],
        }
    if splits["train"]["tokens"] == 0:
        raise StageError(
            f"{in_dir}: no text landed in the train split (val_fraction={config.val_fraction}); "
            "lower val_fraction or add documents"
        )
    if config.val_fraction > 0 and splits["val"]["tokens"] == 0:
        log.warning(
            "the val split is empty: too few chunks for val_fraction=%s; lower chunk_bytes or add documents",
            config.val_fraction,
        )
    skipped: Counter = Counter()
    for p in parts:
        skipped.update(p["skipped"])
    counts = {
        "docs": sum(p["docs"] for p in parts),
        "docs_skipped": dict(sorted(skipped.items())),
        "chunks": sum(p["chunks"] for p in parts),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "bytes": sum(s["bytes"] for s in splits.values()),
        "sample_bytes": tokenizer["sample_bytes"],
        "sample_lines": tokenizer["sample_lines"],
        "long_lines": tokenizer["long_lines"],
    }
    manifest = make_manifest(
        STAGE,
        config,
        outputs,
        counts,
        upstream=upstream,
        format=FORMAT,
        tokenizer=TOKENIZER,
        tokenizer_sha256=tokenizer["sha256"],
        tokenizer_source={"trained": tokenizer["trained"], "path": tokenizer["source"]},
        vocab_size=tokenizer["vocab_size"],
        eos_id=tokenizer["eos_id"],
        splits=splits,
    )
    return write_manifest(out, manifest)


# --------------------------------------------------------------------------- the whole stage


def _cached(out: Path, config: TokenizeConfig, upstream: str) -> dict[str, Any] | None:
    """The manifest of OUT if it was made from the same input and config and is intact."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        m = read_json(path)
    except (OSError, ValueError):
        return None
    if m.get("stage") != STAGE or m.get("upstream") != upstream or m.get("config") != config_dict(config):
        return None
    if config.tokenizer is not None and (
        not config.tokenizer.is_file() or sha256_file(config.tokenizer) != m.get("tokenizer_sha256")
    ):
        return None
    try:
        verify_outputs(out, m)
    except DataError as e:
        log.warning("%s; tokenizing again", e)
        return None
    return m


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an earlier token folder (or an empty folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise StageError(f"out={out} is a file; choose a folder for the token output")
    if not any(out.iterdir()):
        return
    try:
        m = read_json(out / MANIFEST)
    except (OSError, ValueError):
        m = {}
    if m.get("stage") != STAGE and m.get("format") != FORMAT:
        raise StageError(
            f"out={out} exists and is not a token folder; refusing to replace it: choose a new or empty folder"
        )


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder onto OUT; an earlier OUT is moved aside, then deleted.

    Readers see the old folder or the new one, never a mix (between the two renames OUT is absent).
    """
    fsync_dir(staging)
    old = None
    if out.exists():
        old = out.parent / f"{TMP_PREFIX}{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_own_leftovers(out: Path) -> None:
    """Delete what an interrupted run_tokenize into `out` left beside it: its staging folder
    (.tmp-<out>.<8 characters>) and the earlier output it was replacing (.tmp-<out>.old-<pid>-<ns>).
    Nothing else: other stages may be writing their own temporary files in the same folder now."""
    ours = re.compile(rf"{re.escape(TMP_PREFIX + out.name)}\.(?:[a-z0-9_]{{8}}|old-\d+-\d+)")
    for p in out.parent.glob(f"{TMP_PREFIX}{out.name}.*"):
        if not ours.fullmatch(p.name):
            continue
        log.info("removing %s, left by an interrupted tokenize", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_tokenize(
    in_dir: str | os.PathLike, out: str | os.PathLike, config: TokenizeConfig | None = None
) -> dict[str, Any]:
    """The whole stage: tokenizer, then every part, then shards and manifest; returns the manifest.

    If OUT already holds the output of the same input (by its manifest digest) and config, that is
    returned as it is. Otherwise the folder is built next to OUT and renamed onto it at the end.
    """
    config = config or TokenizeConfig()
    in_dir, out = Path(in_dir), Path(out)
    upstream = read_manifest(in_dir, UPSTREAM)["digest"]
    parts = list_parts(in_dir)
    _remove_own_leftovers(out)  # also when cached: a run killed after publishing leaves some
    if (cached := _cached(out, config, upstream)) is not None:
        log.info("%s is up to date (digest %s); nothing to do", out, cached["digest"][:12])
        return cached
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        if config.tokenizer is not None:
            tok = reuse_tokenizer(config.tokenizer, staging)
        else:
            tok = train_tokenizer(in_dir, staging, config)
        t1 = time.perf_counter()
        work = staging / "work"
        results = [encode_part(p, tok["path"], work, config) for p in parts]
        manifest = finalize(in_dir, staging, tok, results, config)
        shutil.rmtree(work)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - t1
    c = manifest["counts"]
    log.info(
        "tokenized %s docs (%.1f MB) into %s tokens (train %s, val %s) in %.1fs (%.1f MB/s; tokenizer %.1fs)",
        f"{c['docs']:,}",
        c["bytes"] / 1e6,
        f"{c['tokens']:,}",
        f"{manifest['splits']['train']['tokens']:,}",
        f"{manifest['splits']['val']['tokens']:,}",
        elapsed,
        c["bytes"] / 1e6 / max(elapsed, 1e-9),
        t1 - t0,
    )
    return manifest
