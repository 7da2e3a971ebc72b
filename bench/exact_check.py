"""The exact check of near-duplicate candidates: `minhash.exact_jaccard` on batches of text pairs.

    python bench/exact_check.py [--pairs 2048] [--batches 5]

Draws pairs of documents from bench/clean_bench.py's generated corpus (half of them a document with
itself or a near copy, half unrelated), and times per batch of --pairs pairs (the size dedup uses,
VERIFY_BATCH): the shingling alone, `exact_jaccard` as it is, and the formulation it replaced
(np.unique over (document, hash) rows, kept below as the reference), checking that both give the
same similarities. Then dedup's loop over the batches, one thread and one per core
(tasks.common.in_threads). Prints seconds and ratios; medians over --batches batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from clean_bench import make_corpus  # noqa: E402

from tasks.clean import minhash  # noqa: E402
from tasks.clean.dedup import VERIFY_BATCH  # noqa: E402
from tasks.common import in_threads  # noqa: E402


def exact_jaccard_unique_rows(texts_a, texts_b, shingle_words: int) -> np.ndarray:
    """The formulation before stop 24: np.unique over (doc, hash) rows."""
    n = len(texts_a)
    sets = []
    for texts in (texts_a, texts_b):
        sh, doc = minhash.shingle_hashes(*minhash.word_hashes(texts), shingle_words)
        sets.append(np.unique(np.stack([doc.astype(np.uint64), sh], axis=1), axis=0))
    size_a = np.bincount(sets[0][:, 0].astype(np.int64), minlength=n)
    size_b = np.bincount(sets[1][:, 0].astype(np.int64), minlength=n)
    both = np.concatenate(sets)
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    same = np.all(both[1:] == both[:-1], axis=1)
    inter = np.bincount(both[1:][same, 0].astype(np.int64), minlength=n)
    union = size_a + size_b - inter
    return np.divide(inter, union, out=np.zeros(n), where=union > 0)


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=VERIFY_BATCH)
    ap.add_argument("--batches", type=int, default=5)
    args = ap.parse_args()
    docs = pa.array(make_corpus(20))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.batches):
        a = rng.integers(0, len(docs), args.pairs)
        b = np.where(rng.random(args.pairs) < 0.5, a, rng.integers(0, len(docs), args.pairs))
        batches.append((docs.take(pa.array(a)), docs.take(pa.array(b))))
    shingle, new, old = [], [], []
    for ta, tb in batches:
        shingle.append(timed(lambda t: minhash.shingle_hashes(*minhash.word_hashes(t), 5), ta)[0])
        t_new, s_new = timed(minhash.exact_jaccard, ta, tb, 5)
        t_old, s_old = timed(exact_jaccard_unique_rows, ta, tb, 5)
        assert np.array_equal(s_new, s_old), "the two formulations disagree"
        new.append(t_new)
        old.append(t_old)
    med = statistics.median
    print(f"{args.batches} batches of {args.pairs:,} pairs, {os.cpu_count()} cores; medians per batch:")
    print(f"  shingling one side            {med(shingle):7.3f} s")
    print(f"  exact_jaccard, np.unique rows {med(old):7.3f} s  (before)")
    print(
        f"  exact_jaccard, sorts          {med(new):7.3f} s  x{med(old) / med(new):.2f} faster, same similarities"
    )
    cores = len(os.sched_getaffinity(0))
    for threads in sorted({1, cores}):
        t0 = time.perf_counter()
        for _ in in_threads(lambda p: minhash.exact_jaccard(*p, 5), batches, threads):
            pass
        print(f"  all {args.batches} batches, {threads} thread(s): {time.perf_counter() - t0:7.3f} s")


if __name__ == "__main__":
    main()
