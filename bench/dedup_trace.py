"""Clean's corpus-wide dedup alone, on the work files of a `forja bench data --keep` folder, so that
its steps can be timed at 10 GB without cleaning the parts each time.

    python bench/dedup_trace.py /work/fd/10GB --memory 1GB            # parts once, then dedup
    python bench/dedup_trace.py /work/fd/10GB --memory 1GB --again    # dedup of the same parts
    python bench/dedup_trace.py /work/fd/10GB --memory 1GB --again --output  # then the output parts

The first form cleans WORK/ingest's parts into WORK/dedup-trace/work (as the stage would, in its
processes) and keeps them with their results; both forms then run dedup_shards over them and print
its log (the seconds of each step) with the peak resident memory of this process (the dedup's,
with --again). --output then writes the kept rows' parts as the stage does (output.write_parts,
into WORK/dedup-trace/parts, replaced) and prints their seconds, their sha256 (one digest of
them all) and the peak again.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import peak_rss_mb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--memory", default="1GB")
    ap.add_argument("--workers", type=int, default=0, help="cores (0: all)")
    ap.add_argument("--again", action="store_true", help="reuse the cleaned parts of an earlier run")
    ap.add_argument("--output", action="store_true", help="then write the output parts, timed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    from tasks.clean import CleanConfig, dedup_shards
    from tasks.clean.stage import CleanStage, plan_shards
    from tasks.common import config_dict
    from tasks.stage import map_planned

    config = CleanConfig(memory_limit=args.memory, workers=args.workers or None)
    trace = args.work / "dedup-trace"
    results_file = trace / "shards.json"
    if not args.again:
        shutil.rmtree(trace, ignore_errors=True)
        (trace / "work").mkdir(parents=True)
        shards = plan_shards(args.work / "ingest", config)
        t = time.perf_counter()
        results = map_planned(CleanStage(), shards, str(trace / "work"), config_dict(config))
        print(f"parts: {len(shards)} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results_file.write_text(json.dumps(results))
    results = json.loads(results_file.read_text())

    t = time.perf_counter()
    out = dedup_shards(results, trace / "work", config)
    print(
        f"dedup: {out['rows_in']:,} -> {out['rows_out']:,} rows in {time.perf_counter() - t:.1f} s, "
        f"peak RSS of this process {peak_rss_mb():.0f} MB; near: "
        f"{out['rules'].get('near_dedup', {}).get('candidate_pairs', 0):,} candidate pairs",
        file=sys.stderr,
    )
    if args.output:
        output_parts(trace, [r["work"] for r in results], out["output"], config)


def output_parts(trace: Path, works: list[str], dedup_file: str, config) -> None:
    """The output phase's parts of the kept rows, as write_output writes them, timed."""
    import hashlib
    import tempfile

    from tasks.clean import connect
    from tasks.clean.output import write_parts

    parts = trace / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="buckets-", dir=trace / "work"))
    t = time.perf_counter()
    with connect(config, trace / "work", ordered=False) as con:
        records, total, _ = write_parts(con, works, dedup_file, parts, config, scratch)
    seconds = time.perf_counter() - t
    shutil.rmtree(scratch, ignore_errors=True)
    digest = hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest()
    print(
        f"output: {len(records)} parts, {total / 1e6:,.0f} MB of text in {seconds:.1f} s, sha256 of "
        f"their sha256s {digest[:16]}, peak RSS of this process {peak_rss_mb():.0f} MB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
