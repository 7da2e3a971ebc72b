"""Decontamination for the `decontaminate` rule (075_decontaminate.sql): n-gram overlap between
the evaluation texts and the training documents.

    EvalIndex.load(files, n)           -> the n-grams of the evaluation texts (hashed, sorted)
    EvalIndex.overlap(texts, doc_ids)  -> per document STRUCT(ngram, hits, eval, source), NULL: none
    overlap_udf(files, n)              -> that as the Arrow UDF `eval_overlap` (index built on first use)
    frozen_sources(texts, docs, n)     -> the documents a frozen set was made from (their doc ids)

What it checks against: the files of `CleanConfig.eval_texts`: a text file is one evaluation
text (the pipeline adds `evaluate.eval_text`, the `--set evaluate.eval_text=FILE` of a run), an
`eval.jsonl` is one text per line ({"text": ...}), such as the frozen evaluation set of a dataset
(FORJA_HOME/data/<dataset>/eval/eval.jsonl), which `forja run` adds by itself (flows/eval_set.py
says when, and why not to the data the set was frozen from).

Why a frozen set needs an exception: its texts are (decoded) validation chunks of this dataset's
own documents. Dropping the document a frozen text came from would empty the validation split
the set was frozen from (and change what `val_bpb` measures), while the frozen set itself never
changes (tasks/evaluate.py freezes it once). So the documents a frozen text came from are kept
and reported as `source`, not dropped; every other document sharing an n-gram with it (a copy
planted in new data, a quote) is dropped. Which documents those are is decided once, when the set
is frozen, on the data it is frozen from: the documents that hold every n-gram of a frozen text
(`frozen_sources`); their doc ids (sha256 of the text) go into the set's manifest
(`frozen_from.sources`), so a document that arrives later is never taken for a source, however
much of a frozen text it holds. A frozen set from before that record (no `frozen_from`) falls back
to deciding it per document: one holding every n-gram of a frozen text is kept as its source.
Texts from plain eval files get no exception: a training document containing one is
contamination. The frozen texts decode exactly to what clean wrote (the tokenizer normalises
nothing: `identity`).

Normalised words: NFC, lower-cased, runs of letters, combining marks and digits (everything
else separates words). An n-gram is `n` consecutive words (13 by default, as in the GPT-3 paper's
decontamination); it is hashed to 64 bits (a polynomial hash of the words' ids in the
evaluation vocabulary: a word the evaluation texts never use cannot be part of a shared n-gram).
All of it runs on Arrow kernels and numpy over a whole batch of documents.
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.clean.arrays import np_values
from tasks.common import StageError

OVERLAP_TYPE = "STRUCT(ngram VARCHAR, hits BIGINT, eval VARCHAR, source BOOLEAN)"
OVERLAP_FIELDS = [("ngram", pa.string()), ("hits", pa.int64()), ("eval", pa.string()), ("source", pa.bool_())]
FROZEN_FILE = "eval.jsonl"  # tasks/evaluate.py's EVAL_FILE, beside its manifest (stage "eval-set")
_SEPARATORS = r"[^\p{L}\p{M}\p{N}]+"
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constants of the hash
_BASE = np.uint64(0xD6E8FEB86659FD93)


def _frozen_manifest(path: Path) -> dict | None:
    """The manifest of an evaluation set frozen by tasks/evaluate.py (eval.jsonl beside an
    eval-set manifest), or None when `path` is not one."""
    manifest = path.parent / "manifest.json"
    if path.name != FROZEN_FILE or not manifest.is_file():
        return None
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("stage") == "eval-set" else None


def is_frozen_set(path: Path) -> bool:
    """An evaluation set frozen by tasks/evaluate.py: eval.jsonl beside an eval-set manifest."""
    return _frozen_manifest(path) is not None


def frozen_from(path: Path) -> dict | None:
    """What a frozen set records of the data it was frozen from: {"ingest": [the ingest digests],
    "sources": [doc ids of the documents its texts came from]}; None for a set frozen before the
    record existed, or a file that is no frozen set."""
    m = _frozen_manifest(path)
    record = (m or {}).get("frozen_from")
    return record if isinstance(record, dict) else None


def read_eval_file(path: Path) -> list[str]:
    """The evaluation texts of one file: a .jsonl holds {"text": ...} per line, any other file is
    one UTF-8 text. A StageError names the file and the line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StageError(f"eval_texts: cannot read {path} as UTF-8 text ({e})") from e
    if path.suffix != ".jsonl":
        return [raw]
    texts = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (ValueError, KeyError, TypeError) as e:
            raise StageError(f'{path}:{i}: expected a JSON object with a "text" field ({e})') from e
    return texts


def words_of(texts: pa.Array) -> pa.ListArray:
    """The lower-cased words of each text (a NULL text has none). No Unicode normalisation here:
    the nfc rule (030) has made the training text NFC, and evaluation texts are made NFC when
    read (pyarrow 25's utf8_normalize does not compose: it cannot be used)."""
    return pc.split_pattern_regex(pc.utf8_lower(pc.fill_null(texts, "")), pattern=_SEPARATORS)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(31))) * _MULT
    return x ^ (x >> np.uint64(29))


def window_hashes(ids: np.ndarray, valid: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every window of `n` consecutive ids and whether all of them are valid.

    `ids` are uint64 word ids over the flattened words of a batch; the caller also checks that a
    window does not cross a document boundary."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    x = _mix(ids + np.uint64(1))
    h = np.zeros(m, np.uint64)
    for k in range(n):  # n vectorised multiply-adds (uint64 arithmetic wraps, as a hash wants)
        h = h * _BASE + x[k : k + m]
    bad = np.concatenate([[0], np.cumsum(~valid, dtype=np.int64)])
    return _mix(h), (bad[n:] - bad[:m]) == 0


def _windows(words: pa.ListArray, vocab: pa.Array, n: int):
    """Per batch: flattened words, their doc of each window start, window hashes, window validity."""
    offsets = np_values(words.offsets).astype(np.int64)
    flat = words.flatten().cast(pa.large_string())
    idx = pc.index_in(flat, value_set=vocab.cast(pa.large_string()))
    valid = np_values(pc.cast(idx.is_valid(), pa.uint8())).astype(bool)
    ids = np_values(pc.fill_null(idx, 0)).astype(np.uint64)
    hashes, ok = window_hashes(ids, valid, n)
    m = len(hashes)
    doc = np.searchsorted(offsets, np.arange(m), side="right") - 1
    ok &= np.arange(m) + n <= offsets[np.minimum(doc + 1, len(offsets) - 1)]
    return flat, offsets, doc, hashes, ok


@dataclass(frozen=True)
class EvalIndex:
    """The n-grams of the evaluation texts: sorted unique hashes, and which text holds each."""

    n: int
    vocab: pa.Array  # every normalised word of the evaluation texts
    labels: tuple[str, ...]  # per evaluation text: "<file name>#<line>" (or the file name)
    frozen: np.ndarray  # per evaluation text: from a frozen set with no record of its sources
    by_id: np.ndarray  # per evaluation text: from a frozen set whose sources are `source_ids`
    source_ids: frozenset[str]  # the doc ids frozen sets recorded as their sources
    sizes: np.ndarray  # per evaluation text: its number of distinct n-grams
    hashes: np.ndarray  # sorted unique n-gram hashes of all texts
    pair_hash: np.ndarray  # (hash, text) pairs, sorted by hash: which texts hold an n-gram
    pair_text: np.ndarray

    @staticmethod
    def load(files: tuple[Path, ...], n: int) -> EvalIndex:
        texts, labels, frozen, by_id, ids = [], [], [], [], set()
        for f in files:
            got = read_eval_file(f)
            many = len(got) > 1 or f.suffix == ".jsonl"
            texts += got
            labels += [f"{f.name}#{i + 1}" if many else f.name for i in range(len(got))]
            record = frozen_from(f)
            frozen += [is_frozen_set(f) and record is None] * len(got)
            by_id += [record is not None] * len(got)
            ids |= set((record or {}).get("sources") or [])
        return EvalIndex.build(texts, labels, frozen, n, by_id, ids)

    @staticmethod
    def build(
        texts: list[str],
        labels: list[str],
        frozen: list[bool],
        n: int,
        by_id: list[bool] | None = None,
        source_ids: set[str] | frozenset[str] = frozenset(),
    ) -> EvalIndex:
        nfc = [unicodedata.normalize("NFC", t) for t in texts]
        words = words_of(pa.array(nfc, pa.large_string()))
        flat = words.flatten()
        vocab = pc.unique(pc.filter(flat, pc.not_equal(flat, ""))) if len(flat) else pa.array([], pa.string())
        pairs_h, pairs_t = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
        if len(texts):
            _, _, doc, hashes, ok = _windows(words, vocab, n)
            pairs = np.unique(np.stack([hashes[ok], doc[ok].astype(np.uint64)], axis=1), axis=0)
            pairs_h, pairs_t = [pairs[:, 0]], [pairs[:, 1].astype(np.int64)]
        ph, pt = np.concatenate(pairs_h), np.concatenate(pairs_t)
        return EvalIndex(
            n=n,
            vocab=vocab,
            labels=tuple(labels),
            frozen=np.asarray(frozen, bool),
            by_id=np.asarray(by_id if by_id is not None else [False] * len(texts), bool),
            source_ids=frozenset(source_ids),
            sizes=np.bincount(pt, minlength=len(texts)),
            hashes=np.unique(ph),
            pair_hash=ph,
            pair_text=pt,
        )

    def overlap(
        self, texts: pa.Array | pa.ChunkedArray, doc_ids: pa.Array | pa.ChunkedArray | None = None
    ) -> pa.StructArray:
        """Per document: the first shared n-gram (its words), how many of its n-grams are
        evaluation n-grams, which evaluation text holds the first one, and whether the document
        is the source of the frozen texts it shares n-grams with (the module docstring says how
        that is decided). NULL: nothing shared."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if isinstance(doc_ids, pa.ChunkedArray):
            doc_ids = doc_ids.combine_chunks()
        ids = doc_ids.to_pylist() if doc_ids is not None and self.source_ids else None
        n_docs = len(texts)
        ngram: list[str | None] = [None] * n_docs
        hits = np.zeros(n_docs, np.int64)
        which: list[str | None] = [None] * n_docs
        source = np.zeros(n_docs, bool)
        if len(self.hashes) and n_docs:
            flat, _, doc, hashes, ok = _windows(words_of(texts), self.vocab, self.n)
            pos = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
            match = ok & (self.hashes[pos] == hashes)
            where = np.flatnonzero(match)
            hits = np.bincount(doc[where], minlength=n_docs).astype(np.int64)
            # `where` is in position order, so each document's matches are one run of it
            docs_hit, starts = np.unique(doc[where], return_index=True)
            ends = [*starts[1:], len(where)] if len(where) else []  # (no match in the batch: none)
            for d, lo, hi in zip(docs_hit, starts, ends, strict=True):
                mine = where[lo:hi]
                first = int(mine[0])
                ngram[d] = " ".join(flat.slice(first, self.n).to_pylist())
                texts_of = self._texts_holding(np.unique(hashes[mine]))
                which[d] = self.labels[int(self._texts_holding(hashes[first : first + 1])[0])]
                counts = np.bincount(texts_of, minlength=len(self.labels))
                whole = bool(np.any(self.frozen & (self.sizes > 0) & (counts == self.sizes)))
                # a recorded source: every text it shares n-grams with is of a set that names it
                named = ids is not None and ids[d] in self.source_ids and bool(np.all(self.by_id[counts > 0]))
                source[d] = whole or named
        mask = pa.array(hits == 0)
        return pa.StructArray.from_arrays(
            [
                pa.array(ngram, pa.string()),
                pa.array(hits, pa.int64()),
                pa.array(which, pa.string()),
                pa.array(source, pa.bool_()),
            ],
            names=["ngram", "hits", "eval", "source"],
            mask=mask,
        )

    def _texts_holding(self, hashes: np.ndarray) -> np.ndarray:
        """The evaluation texts holding each of these (shared) n-gram hashes, one entry per pair."""
        lo = np.searchsorted(self.pair_hash, hashes, side="left")
        hi = np.searchsorted(self.pair_hash, hashes, side="right")
        return np.concatenate(
            [self.pair_text[a:b] for a, b in zip(lo, hi, strict=True)] or [np.zeros(0, np.int64)]
        )


def eval_digests(files: list[Path]) -> dict[str, str]:
    """{file name: sha256} of the evaluation files (what the clean key records, not their paths);
    a frozen set's record of its source documents is part of its digest (it decides what is kept)."""
    out = {}
    for f in files:
        try:
            digest = hashlib.sha256(f.read_bytes())
        except OSError as e:
            raise StageError(f"eval_texts: cannot read {f} ({e})") from e
        if (record := frozen_from(f)) is not None:
            digest.update(json.dumps(sorted(record.get("sources") or [])).encode())
        out[f.name if f.name not in out else str(f)] = digest.hexdigest()
    return out


@functools.lru_cache(maxsize=4)
def _index(files: tuple[Path, ...], n: int, digest: str) -> EvalIndex:
    return EvalIndex.load(files, n)


def overlap_udf(files: tuple[Path, ...], n: int):
    """The Arrow UDF of 075_decontaminate.sql. The index is built on the first call, once per
    process and content (a shard worker builds it once for all its shards)."""
    digest = json.dumps(eval_digests(list(files)), sort_keys=True) if files else ""

    def udf(texts: pa.Array, doc_ids: pa.Array) -> pa.StructArray:
        if not files:
            return pa.nulls(len(texts), pa.struct(OVERLAP_FIELDS))
        return _index(files, n, digest).overlap(texts, doc_ids)

    return udf


def frozen_sources(texts: list[str], docs: list[tuple[str, str]], n: int) -> list[str]:
    """The doc ids of the documents among `docs` ((doc_id, text) pairs: the data a set is frozen
    from) that hold every n-gram of one of the frozen `texts`: where the texts came from."""
    if not texts or not docs:
        return []
    index = EvalIndex.build(texts, [str(i) for i in range(len(texts))], [True] * len(texts), n)
    hit = index.overlap(pa.array([t for _, t in docs], pa.large_string()))
    source = hit.field("source").fill_null(False).to_pylist()
    return sorted({doc_id for (doc_id, _), s in zip(docs, source, strict=True) if s})
