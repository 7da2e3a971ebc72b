"""Where a data stage's memory goes: run ingest or clean of a `forja bench data --keep` work folder
in a child interpreter, sample the resident memory of its process tree every --every seconds (and
the child's RssAnon / RssFile from /proc), and print the peak between consecutive log lines of the
stage, so each phase (shards, classification, publishing; parts, dedup, output) shows its own peak.

    python bench/stage_trace.py ingest /work/fd/10GB --memory 1GB
    python bench/stage_trace.py clean /work/fd/1GB --memory 1GB
    python bench/stage_trace.py ingest /work/fd/1GB --memory 1GB --seen-max 100000  # rewrites, as past a full table

ingest reads WORK/corpus/corpus.jsonl into WORK/ingest-trace; clean reads WORK/ingest into
WORK/clean-trace (both removed first, and kept after for inspection). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from measure import tree_sample  # noqa: E402

CHILD = """
import logging, shutil, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
stage, work, memory, seen_max = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
workers = int(sys.argv[5]) or None
t0 = time.perf_counter()
if stage == "ingest":
    if seen_max:  # the shards' tables record at most seen_max texts
        import tasks.ingest.seen as seen
        init = seen.SeenTexts.__init__
        def capped(self, slots):
            init(self, slots)
            self.capacity = min(self.capacity, seen_max)
        seen.SeenTexts.__init__ = capped
    from tasks.ingest import IngestConfig, run_ingest
    out = work / "ingest-trace"
    shutil.rmtree(out, ignore_errors=True)
    m = run_ingest([str(work / "corpus" / "corpus.jsonl")], out, IngestConfig(memory_limit=memory, workers=workers))
    print(f"done: {m['counts']['total']['documents']:,} documents", file=sys.stderr)
else:
    from tasks.clean import CleanConfig, run_clean
    out = work / "clean-trace"
    shutil.rmtree(out, ignore_errors=True)
    m = run_clean(work / "ingest", out, CleanConfig(memory_limit=memory, workers=workers))
    print(f"done: {m['counts']['rows_in']:,} -> {m['counts']['rows_out']:,} rows", file=sys.stderr)
print(f"stage seconds {time.perf_counter() - t0:.1f}", file=sys.stderr)
"""


def rss_split_mb(pid: int) -> tuple[int, int]:
    """RssAnon and RssFile of one process (MB): anonymous memory against mapped files and libraries."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    field = {k: v for k, _, v in (line.partition(":") for line in status.splitlines())}
    if "RssAnon" not in field:  # the process is exiting (a zombie has no memory lines)
        return 0, 0
    return int(field["RssAnon"].split()[0]) // 1024, int(field["RssFile"].split()[0]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["ingest", "clean"])
    ap.add_argument("work", type=Path, help="a `forja bench data --keep` folder for one size")
    ap.add_argument("--memory", default="2GB", help="the stage's memory_limit")
    ap.add_argument("--every", type=float, default=0.2, help="seconds between samples")
    ap.add_argument(
        "--seen-max",
        type=int,
        default=0,
        help="ingest: record at most this many texts in a shard's table (0: as it holds); below a "
        "corpus's document count, the commit rewrites its parts as it does past a full table",
    )
    ap.add_argument("--workers", type=int, default=0, help="the stage's cores (0: all)")
    a = ap.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, a.stage, str(a.work), a.memory, str(a.seen_max), str(a.workers)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.perf_counter()
    lock = threading.Lock()
    peak = {"tree": 0.0, "anon": 0, "file": 0}  # since the last log line
    overall = dict(peak)

    def read_log() -> None:
        for line in proc.stderr:
            with lock:
                print(
                    f"{time.perf_counter() - t0:8.1f}s  peak since the last line: {peak['tree']:6.0f} MB "
                    f"(anon {peak['anon']}, file {peak['file']})  | {line.rstrip()}",
                    flush=True,
                )
                peak.update(tree=0.0, anon=0, file=0)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    while proc.poll() is None:
        tree = tree_sample(proc.pid, {})
        anon, file = rss_split_mb(proc.pid)
        with lock:
            for d in (peak, overall):
                if tree > d["tree"]:
                    d.update(tree=tree, anon=anon, file=file)
        time.sleep(a.every)
    reader.join(timeout=5)
    print(
        f"peak tree RSS {overall['tree']:.0f} MB (the stage process: anon {overall['anon']}, file "
        f"{overall['file']}); wall {time.perf_counter() - t0:.1f} s; exit {proc.returncode}"
    )
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
