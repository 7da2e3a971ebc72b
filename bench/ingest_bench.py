"""Ingest throughput and peak memory on generated corpora (prints figures; not a test).

    python bench/ingest_bench.py                 # 200 MB single line + ~1.5 GB folder
    python bench/ingest_bench.py --gb 0.2 --line-mb 50   # a quick look

Cases, each run by `run_ingest` in a fresh child process whose peak RSS is read with wait4:

    line      one .txt file holding a single line of --line-mb MB (split=file: one document)
    line-gz   the same line, gzip-compressed
    folder    --gb GB of text in 64 MB files (documents of ~1.5 KB, split=blank_line), two of
              them zstd-compressed
    rerun     the folder again: nothing new, so only reading, hashing and the dedup query

Inputs are made from tinyshakespeare (../shared/corpora) with a unique tag per document, so
every document is new; they live in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
FILE_MB = 64

CHILD = """
import json, logging, sys, time
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.INFO, format="  %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
from tasks.ingest import IngestConfig, run_ingest
cfg = IngestConfig(**json.loads(sys.argv[4]))
t0 = time.perf_counter()
r = run_ingest([sys.argv[2]], sys.argv[3], cfg)
print(json.dumps({"seconds": time.perf_counter() - t0, "run": r["run"]}))
"""


def make_line(path: Path, mb: int) -> None:
    words = SHAKESPEARE.read_text(encoding="utf-8").split()
    block = (" ".join(words) + " ").encode()
    left = mb * 1_000_000
    with open(path, "wb") as f:
        while left > 0:
            piece = block[:left]
            f.write(piece)
            left -= len(piece)
        f.write(b"\n")


def make_folder(folder: Path, gb: float) -> None:
    paras = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    folder.mkdir(parents=True)
    n_files = max(1, round(gb * 1000 / FILE_MB))
    doc = 0
    for i in range(n_files):
        out = bytearray()
        j = 0
        while len(out) < FILE_MB * 1_000_000:
            body = "\n".join(paras[(j + k) % len(paras)] for k in range(10))
            out += f"[doc {doc}]\n{body}\n\n".encode()
            doc += 1
            j += 10
        name = folder / f"part-{i:03d}.txt"
        if i < 2 and n_files > 2:
            name.with_suffix(".txt.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(bytes(out)))
        else:
            name.write_bytes(out)


def run_case(name: str, source: Path, out: Path, config: dict) -> dict:
    size = sum(p.stat().st_size for p in ([source] if source.is_file() else source.rglob("*")) if p.is_file())
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ROOT), str(source), str(out), json.dumps(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    t0 = time.perf_counter()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"case {name} failed (exit {os.waitstatus_to_exitcode(status)})")
    result = json.loads(stdout.strip().splitlines()[-1])
    run = result["run"]
    return {
        "case": name,
        "input_MB": round(size / 1e6, 1),
        "docs_read": run["documents"],
        "accepted": run["accepted"],
        "seconds": round(wall, 1),
        "MB_per_s": round(size / 1e6 / wall, 1),
        "peak_rss_MB": round(usage.ru_maxrss / 1024, 0),  # Linux: KiB
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.5, help="size of the generated folder")
    ap.add_argument("--line-mb", type=int, default=200, help="size of the single-line file")
    ap.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="forja-ingest-bench-", dir=args.workdir))
    rows = []
    try:
        print(f"generating inputs in {work} ...", file=sys.stderr)
        line = work / "line" / "one-line.txt"
        line.parent.mkdir()
        make_line(line, args.line_mb)
        line_gz = work / "line-gz" / "one-line.txt.gz"
        line_gz.parent.mkdir()
        with open(line, "rb") as f, gzip.open(line_gz, "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g, 1 << 20)
        make_folder(work / "folder", args.gb)
        print("running ...", file=sys.stderr)
        rows.append(run_case("line", line, work / "out-line", {}))
        rows.append(run_case("line-gz", line_gz, work / "out-line-gz", {}))
        rows.append(run_case("folder", work / "folder", work / "out-folder", {"split": "blank_line"}))
        rows.append(run_case("rerun", work / "folder", work / "out-folder", {"split": "blank_line"}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = list(rows[0])
    print(" ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]!s:>12}" for c in cols))


if __name__ == "__main__":
    main()
