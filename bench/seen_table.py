"""Ingest's table of the texts a shard has read (tasks/ingest/seen.py) against a Python set.

    python bench/seen_table.py [--texts 8000000] [--repeats 0.03] [--slots 16777216]

Feeds the same stream of sha256 digests (a share of them repeats of earlier ones) to SeenTexts in
the shard's batches and to a Python set of the digests one at a time (what a shard did before,
until it held 1 M texts), checks that both find the same repeats, and prints the seconds of each
and the memory each holds at the end (the set's is its table plus its digest objects).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np

from tasks.ingest.seen import SeenTexts
from tasks.ingest.shard import CHECK_DOCS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=8_000_000)
    ap.add_argument("--repeats", type=float, default=0.03, help="share of the stream that repeats")
    ap.add_argument("--slots", type=int, default=1 << 24, help="the table's slots (1GB memory: 2^24)")
    a = ap.parse_args()
    rng = random.Random(0)
    distinct = [os.urandom(32) for _ in range(a.texts)]
    stream = [
        distinct[rng.randrange(i)] if i and rng.random() < a.repeats else distinct[i] for i in range(a.texts)
    ]

    t0 = time.perf_counter()
    known: set[bytes] = set()
    expected = []
    for d in stream:
        expected.append(d not in known)
        known.add(d)
    set_s = time.perf_counter() - t0
    set_mb = (sys.getsizeof(known) + sum(sys.getsizeof(d) for d in known)) / 2**20

    table = SeenTexts(a.slots)
    t0 = time.perf_counter()
    got = [table.first_seen(stream[i : i + CHECK_DOCS]) for i in range(0, len(stream), CHECK_DOCS)]
    table_s = time.perf_counter() - t0
    same = bool((np.concatenate(got) == np.array(expected)).all())
    print(
        f"{a.texts:,} digests, {a.texts - len(known):,} repeats; the same repeats found: {same}\n"
        f"python set:  {set_s:6.2f} s  {set_mb:6.0f} MB ({len(known):,} digests)\n"
        f"SeenTexts:   {table_s:6.2f} s  {table.table.nbytes / 2**20:6.0f} MB "
        f"({table.size:,} of {table.capacity:,} recorded; {a.slots:,} slots)  x{table_s / set_s:.2f} the time"
    )


if __name__ == "__main__":
    main()
