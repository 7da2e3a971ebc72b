"""Clean throughput and memory, per rule group, on a generated ~100 MB ingest folder.

    python bench/clean_bench.py [--mb 100] [--parts 2] [--threads 0] [--memory-limit 2GB] [--workers 0]

Builds an ingest-stage folder from tinyshakespeare: documents of 3-16 speeches drawn at random, plus exact
duplicates (some re-cased or re-indented), near-duplicates (a few words changed), junk (symbol
soup, one line repeated 50 times, digit strings), mojibake, PII and stray whitespace/control
characters. Then runs `run_clean` several times, each in a fresh subprocess (its own peak RSS),
switching on one more rule group each time:

    io        every rule off: read, sort by doc_id, write parts + report (the floor)
    maps      + mojibake, nfc, control_chars, whitespace, pii
    filters   + length, quality
    language  + language (CLD2), decontaminate (no evaluation texts: the UDF's floor)
    exact     + exact_dedup
    all       + near_dedup (the default config)

Prints wall seconds (for the steps with a dedup rule, split into the parts, dedup and output
phases), MB/s of input text, CPU seconds (the step's process and its worker
processes, all threads: the work done, whatever else the machine runs), the cost of each group
over the previous step, peak RSS (of the step's process; with --workers, the largest worker's
too), and a JSON summary with the rule counts of each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import children_peak_rss_mb, cpu_seconds, peak_rss_mb, run_step  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
SEED = ROOT.parent / "shared" / "seed" / "training-llms-with-transformers.pt.txt"
MAPS = ["mojibake", "nfc", "control_chars", "whitespace", "pii"]
FILTERS = ["length", "quality"]
LANGUAGE = ["language", "decontaminate"]  # decontaminate: no evaluation texts here, a pass-through
STEPS = {
    "io": [],
    "maps": MAPS,
    "filters": MAPS + FILTERS,
    "language": MAPS + FILTERS + LANGUAGE,
    "exact": [*MAPS, *FILTERS, *LANGUAGE, "exact_dedup"],
    "all": [*MAPS, *FILTERS, *LANGUAGE, "exact_dedup", "near_dedup"],
}


def make_corpus(mb: float, seed: int = 0) -> list[str]:
    """Documents from tinyshakespeare with duplicates, near-duplicates, junk, mojibake and PII."""
    rng = random.Random(seed)
    paras = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    moj = SEED.read_text(encoding="utf-8")
    docs: list[str] = []
    total = 0
    while total < mb * 1e6:
        # k speeches drawn from anywhere in the play: documents that share no more text than real
        # ones do (contiguous spans of a 1 MB corpus would make most of 100 MB near-duplicates).
        k = rng.choice([3, 4, 6, 8, 12, 16])
        i = rng.randrange(len(paras))
        doc = "\n\n".join(rng.sample(paras, k))
        r = rng.random()
        if r < 0.08 and docs:  # exact duplicate of an earlier document, sometimes re-cased/indented
            doc = rng.choice(docs[-5000:])
            if rng.random() < 0.3:
                doc = doc.upper() if rng.random() < 0.5 else doc.replace("\n", "\n  ")
        elif r < 0.13 and docs:  # near duplicate: a few words changed
            words = rng.choice(docs[-5000:]).split(" ")
            for _ in range(max(1, len(words) // 50)):
                j = rng.randrange(len(words))
                words[j] = words[j] + "e"
            doc = " ".join(words)
        elif r < 0.14:  # symbol soup
            doc = "".join(rng.choice("#$%^&*(){}[]<>~|=+-_/\\") for _ in range(rng.randrange(50, 2000)))
        elif r < 0.145:  # one line 50 times
            doc = (paras[i].split("\n")[-1] + "\n") * 50
        elif r < 0.15:  # digits
            doc = "".join(rng.choice("0123456789") for _ in range(rng.randrange(10, 500)))
        elif r < 0.16:  # mojibake: a slice of the real sample
            a = rng.randrange(0, len(moj) - 2000)
            doc = moj[a : a + rng.randrange(200, 2000)]
        elif r < 0.18:  # PII
            doc += (
                f"\n\nWrite to user{i}@example.org, ring +44 20 7946 {i % 10000:04d}, host 10.0.{i % 256}.7."
            )
        elif r < 0.20:  # stray whitespace and control characters
            doc = "  " + doc.replace("\n", " \r\n") + "\u00a0\u200b\n\n\n"
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs


def make_ingest_dir(folder: Path, mb: float, parts: int) -> tuple[int, int]:
    """An ingest-stage folder (data parts + manifest). Returns (documents, bytes of text)."""
    import datetime as dt

    import pyarrow as pa

    from tasks.common import make_manifest, write_manifest, write_parquet

    docs = make_corpus(mb)
    (folder / "data").mkdir(parents=True)
    per_part = -(-len(docs) // parts)
    outputs = []
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for p in range(parts):
        chunk = docs[p * per_part : (p + 1) * per_part]
        n = len(chunk)
        table = pa.table(
            {
                "doc_id": [hashlib.sha256(d.encode()).hexdigest() for d in chunk],
                "source": ["bench"] * n,
                "path": [f"bench-{p}.txt"] * n,
                "offset": pa.array(range(n), pa.int64()),
                "text": chunk,
                "n_bytes": pa.array([len(d.encode()) for d in chunk], pa.int64()),
                "encoding": ["utf-8"] * n,
                "ingested_at": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
            }
        )
        rec = write_parquet(table, folder / "data" / f"part-{p:05d}.parquet")
        outputs.append({**rec, "path": f"data/{rec['path']}"})
    write_manifest(folder, make_manifest("ingest", {}, outputs, {"docs": len(docs)}))
    return len(docs), sum(len(d.encode()) for d in docs)


class PhaseClock(logging.Handler):
    """Splits a clean's wall time into its phases from the stage's own log line at the end of
    dedup ("dedup: ... in 5.7s"): the parts (clean_shard on every part, in workers), dedup (one
    process; its exact check in threads), and output (the kept parts, report and manifest)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.dedup: tuple[float, float] | None = None  # (when it ended, its seconds)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("dedup: "):
            self.dedup = (time.perf_counter(), float(record.args[2]))

    def split(self, t0: float, seconds: float) -> dict:
        if self.dedup is None:  # no corpus rule ran
            return {}
        end, dedup_s = self.dedup
        parts_s = end - dedup_s - t0
        return {"parts_s": parts_s, "dedup_s": dedup_s, "output_s": seconds - parts_s - dedup_s}


def step(ingest: Path, out: Path, on: list[str], engine: dict) -> dict:
    from tasks.clean import CleanConfig, rule_names, run_clean

    rules = {r: r in on for r in rule_names()}
    config = CleanConfig(rules=rules, verify_input=False, **engine)
    phases = PhaseClock()
    logging.getLogger("forja.clean").addHandler(phases)
    logging.getLogger("forja.clean").setLevel(logging.INFO)
    t0, c0 = time.perf_counter(), cpu_seconds()
    manifest = run_clean(ingest, out, config)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        **phases.split(t0, seconds),
        "cpu_s": cpu_seconds() - c0,
        "rows_out": manifest["counts"]["rows_out"],
        "dropped": manifest["counts"]["dropped"],
        "changed": manifest["counts"]["changed"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB of text")
    ap.add_argument("--parts", type=int, default=2, help="ingest parts (the unit clean_shard maps over)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="DuckDB threads per process (0: the stage's cores divided between its processes)",
    )
    ap.add_argument("--memory-limit", default="2GB", help="the stage's memory_limit (DuckDB gets half)")
    ap.add_argument(
        "--workers", type=int, default=0, help="the stage's cores (0: all; 1: one core, in process)"
    )
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS))
    ap.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--ingest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.step:  # inside the subprocess
        figures = step(args.ingest, args.out, STEPS[args.step], json.loads(args.engine))
        print(
            json.dumps(
                {**figures, "peak_rss_mb": peak_rss_mb(), "worker_peak_rss_mb": children_peak_rss_mb()}
            )
        )
        return

    engine = {
        "memory_limit": args.memory_limit,
        "threads": args.threads or None,
        "workers": args.workers or None,
    }
    tmp = Path(tempfile.mkdtemp(prefix="forja-clean-bench-"))
    try:
        t0 = time.perf_counter()
        n_docs, n_bytes = make_ingest_dir(tmp / "ingest", args.mb, args.parts)
        mb = n_bytes / 1e6
        print(
            f"corpus: {n_docs:,} docs, {mb:.1f} MB in {args.parts} parts (built in {time.perf_counter() - t0:.0f}s); "
            f"{os.cpu_count()} cores, DuckDB threads {args.threads or 'all'}, memory_limit {args.memory_limit}, "
            f"workers {args.workers or 'all cores'}"
        )
        print("(wall time counts whatever else the machine runs; cpu is the step's own work)")
        report: dict = {"corpus_mb": round(mb, 1), "docs": n_docs, "parts": args.parts, "steps": {}}
        prev = None
        for name in args.steps.split(","):
            r = run_step(
                __file__,
                [
                    "--step",
                    name,
                    "--ingest",
                    str(tmp / "ingest"),
                    "--out",
                    str(tmp / f"out-{name}"),
                    "--engine",
                    json.dumps(engine),
                ],
            )
            r["mb_per_s"] = mb / r["seconds"]
            extra = ""
            if prev is not None:
                r["group_s"] = r["seconds"] - prev["seconds"]
                r["group_cpu_s"] = r["cpu_s"] - prev["cpu_s"]
                extra = f"  group +{r['group_s']:5.2f} s (cpu +{r['group_cpu_s']:5.2f} s)"
            print(
                f"{name:8s} {r['seconds']:7.2f} s  {r['mb_per_s']:6.1f} MB/s  cpu {r['cpu_s']:7.2f} s  "
                f"peak RSS {r['peak_rss_mb']:5.0f} MB"
                + (f" (workers {r['worker_peak_rss_mb']:.0f} MB)" if r.get("worker_peak_rss_mb") else "")
                + extra
                + (
                    f"  parts {r['parts_s']:.2f} s, dedup {r['dedup_s']:.2f} s, output {r['output_s']:.2f} s"
                    if "parts_s" in r
                    else ""
                )
            )
            report["steps"][name] = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
            prev = r
            shutil.rmtree(tmp / f"out-{name}", ignore_errors=True)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
