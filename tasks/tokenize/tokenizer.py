"""Step 1: the SentencePiece model of a token folder, trained on a seeded sample of the corpus or
copied from an existing model; SentencePiece's training errors restated as what to change."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sentencepiece as spm

from lm.data import TOKENIZER
from lm.errors import DataError
from lm.fileio import atomic_write_bytes
from lm.tokenizer import Tokenizer
from tasks.common import Progress, StageError
from tasks.tokenize.config import NEWLINE, TokenizeConfig
from tasks.tokenize.parts import corpus_bytes, iter_docs, list_parts
from tasks.tokenize.split import chunk_text, cut_line, hash_unit, split_of

log = logging.getLogger("forja.tokenize")


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
        except BaseException as e:  # an interrupt (Ctrl-C) too: re-raised as itself, not as a bad config
            self.error = e
            if not isinstance(e, Exception):
                raise

    def _lines(self) -> Iterator[str]:
        cfg = self.config
        limit = cfg.max_sentence_length
        progress = Progress("tokenizer sample", total=self.expected, unit="bytes", logger=log)
        skipped: Counter = Counter()
        for path in self.parts:
            for doc_id, text in iter_docs(path, skipped, warn=False):  # encode_part warns
                for i, chunk in enumerate(chunk_text(text, cfg.chunk_bytes)):
                    if split_of(doc_id, i, cfg.val_fraction) != "train":
                        continue
                    if (
                        self.keep < 1.0
                        and hash_unit(f"{cfg.seed}\x00{doc_id}\x00{i}", b"forja-sample") >= self.keep
                    ):
                        continue
                    self.chunks += 1
                    for line in chunk.split(NEWLINE):
                        if not line:
                            continue
                        n = len(line) if line.isascii() else len(line.encode("utf-8"))
                        pieces = [line] if n <= limit else cut_line(line, limit)
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


def tokenizer_info(path: Path, trained: bool, source: Path | None = None, **sample: int) -> dict[str, Any]:
    """The tokenizer record that `finalize` takes: the model's digest, size and EOS, and its sample."""
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


def _sample_of(parts: list[Path], config: TokenizeConfig, total: int) -> _Sample:
    """The sample of `config.sample_bytes` from parts holding `total` bytes of text."""
    train_bytes = total * (1.0 - config.val_fraction)  # an estimate: the split is by chunk
    keep = min(1.0, config.sample_bytes / max(1.0, train_bytes))
    return _Sample(parts, config, keep, expected=int(min(config.sample_bytes, train_bytes)))


def train_tokenizer(
    in_dir: str | os.PathLike, out: str | os.PathLike, config: TokenizeConfig
) -> dict[str, Any]:
    """Train SentencePiece on a bounded, seeded sample of the corpus; write OUT/tokenizer.model.

    The model is a pure function of the sampled text and the config: the same input and config give
    the same bytes. Returns the tokenizer record that `finalize` takes.
    """
    in_dir = Path(in_dir)
    parts = list_parts(in_dir)
    total = corpus_bytes(parts)
    if total == 0:
        raise StageError(f"{in_dir} holds no text to train a tokenizer on; check the clean stage's output")
    return _train([_sample_of(parts, config, total)], str(in_dir), total, Path(out), config)


def train_mixture_tokenizer(
    sources: list[tuple[str, str | os.PathLike, float]], out: str | os.PathLike, config: TokenizeConfig
) -> dict[str, Any]:
    """One tokenizer for a weighted mixture: SentencePiece trained on a sample of each source's
    clean output (name, folder, weight) of `weight / sum of weights * sample_bytes` bytes (all of a
    source's train text when it has less). Writes OUT/tokenizer.model; returns its record."""
    total_weight = sum(w for _, _, w in sources)
    samples, total = [], 0
    for name, folder, weight in sources:
        parts = list_parts(Path(folder))
        size = corpus_bytes(parts)
        if size == 0:
            raise StageError(f"source {name}: {folder} holds no text; check the clean stage's output")
        budget = max(1, int(config.sample_bytes * weight / total_weight))
        samples.append(_sample_of(parts, config.model_copy(update={"sample_bytes": budget}), size))
        total += size
    record = _train(
        samples, f"the mixture of {', '.join(n for n, _, _ in sources)}", total, Path(out), config
    )
    return record | {
        "sample_bytes_by_source": {n: s.bytes for (n, _, _), s in zip(sources, samples, strict=True)}
    }


def _train(
    samples: list[_Sample], what: str, total: int, out: Path, config: TokenizeConfig
) -> dict[str, Any]:
    log.info(
        "training a %s tokenizer (vocab %d) on up to %.1f MB of %.1f MB",
        config.model_type,
        config.vocab_size,
        config.sample_bytes / 1e6,
        total / 1e6,
    )
    t0 = time.perf_counter()
    model = io.BytesIO()
    lines = (line for sample in samples for line in sample)

    def errors() -> BaseException | None:
        return next((s.error for s in samples if s.error is not None), None)

    try:
        spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model, **config.trainer_args())
    except RuntimeError as e:
        if (error := errors()) is not None:
            raise error from None
        if sum(s.lines for s in samples) == 0:
            raise StageError(f"{what}: the train split holds no text to train a tokenizer on") from e
        raise _explain_training_error(e) from e
    if (error := errors()) is not None:
        raise error
    sample_bytes, sample_lines = sum(s.bytes for s in samples), sum(s.lines for s in samples)
    long_lines = sum(s.long_lines for s in samples)
    if long_lines:
        log.warning(
            "%d lines of the tokenizer sample were longer than max_sentence_length=%d bytes and were fed "
            "cut into pieces (SentencePiece would have skipped them); raise max_sentence_length to keep "
            "them whole",
            long_lines,
            config.max_sentence_length,
        )
    path = out / TOKENIZER
    atomic_write_bytes(path, model.getvalue())
    log.info(
        "trained the tokenizer on %s lines (%.1f MB) in %.1fs",
        f"{sample_lines:,}",
        sample_bytes / 1e6,
        time.perf_counter() - t0,
    )
    return tokenizer_info(
        path, True, sample_bytes=sample_bytes, sample_lines=sample_lines, long_lines=long_lines
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
    return tokenizer_info(path, False, source)
