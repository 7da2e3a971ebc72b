"""What rewriting one ingest part costs in memory: the ways of dropping a few rows from its row
groups, each in a fresh interpreter, with the anonymous memory (RssAnon) sampled every 10 ms
against Arrow's own count of its live bytes (the pool's peak). The difference is memory the
allocator keeps after it was freed.

    python bench/rewrite_memory.py /work/fd/1GB/ingest/data/part-000001-00000.parquet

Modes (every 500th row dropped, each row group written as one):
    take         `Table.take` of the kept rows, then written (the commit before stop 29)
    slices       zero-copy slices of the runs of kept rows, then written
    slices+free  the same, and the pool's free pages given back after each row group (the commit now)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
MODES = ("take", "slices", "slices+free")

CHILD = """
import sys, tempfile, threading, time
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from tasks.common import ROW_GROUP_ROWS
from tasks.ingest.commit import _rows
from tasks.ingest.layout import parquet_writer

mode, part = sys.argv[1], sys.argv[2]

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

pf = pq.ParquetFile(part)
pf.read_row_group(0)  # libraries and their first buffers, before the baseline
pool = pa.default_memory_pool()
pool.release_unused()
base, peak, done = anon_mb(), [0], []

def sample():
    while not done:
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.01)

sampler = threading.Thread(target=sample)
sampler.start()
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    writer = parquet_writer(Path(tmp) / "out.parquet", pf.schema_arrow)
    for rg in range(pf.num_row_groups):
        table = pf.read_row_group(rg)
        keep = np.setdiff1d(np.arange(table.num_rows), np.arange(0, table.num_rows, 500))
        kept = table.take(pa.array(keep)) if mode == "take" else _rows(table, keep)
        writer.write_table(kept, row_group_size=ROW_GROUP_ROWS)
        del table, kept
        if mode == "slices+free":
            pool.release_unused()
    writer.close()
seconds = time.perf_counter() - t0
done.append(True)
sampler.join()
print(f"{mode:12s} RssAnon +{peak[0] - base:4d} MB   Arrow pool peak {pool.max_memory() / 2**20:4.0f} MB   {seconds:.2f} s")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", type=Path, help="an ingest part (Parquet)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    md = pq.ParquetFile(a.part).metadata
    print(f"{a.part}: {md.num_rows:,} rows in {md.num_row_groups} row groups")
    for _ in range(a.rounds):
        for mode in MODES:
            subprocess.run([sys.executable, "-c", CHILD, mode, str(a.part)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
