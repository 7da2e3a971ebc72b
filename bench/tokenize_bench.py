"""Tokenize throughput and memory: tasks.tokenize against a bare single-process `sp.encode`.

    python bench/tokenize_bench.py [--mb 100] [--vocab 4096] [--parts 4] [--threads 0]

Builds a clean-stage folder of tinyshakespeare repeated to about --mb MB (one document per copy,
spread over --parts Parquet parts), trains the tokenizer once, then measures, each in a fresh
subprocess so its peak RSS is its own:

    train         train_tokenizer (sample_bytes at its default)
    bare          the same text, one `sp.encode(doc)` call per document, one thread
    bare_chunks   the same text cut into the stage's chunks, one `sp.encode(chunk)` per chunk, one
                  thread: the baseline that does the same tokenizer work as the stage
    encode        encode_part over every part + finalize (shards and manifest): the stage without
                  tokenizer training

The target: encode faster than bare, with peak RSS under 1 GB. (SentencePiece is slower on one
1 MB string than on the same text in pieces, so `bare` flatters the stage; `bare_chunks` does not.) Prints one line per step and a JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import cpu_seconds, peak_rss_mb, run_step  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def make_clean_dir(folder: Path, mb: float, parts: int) -> int:
    """A clean-stage output: tinyshakespeare repeated, one document per copy. Returns its bytes."""
    import pyarrow as pa

    from tasks.common import make_manifest, write_manifest, write_parquet

    text = SHAKESPEARE.read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    copies = max(1, math.ceil(mb * 1e6 / n_bytes))
    per_part = math.ceil(copies / parts)
    folder.mkdir(parents=True)
    outputs = []
    for p in range(parts):
        ids = [f"shakespeare-{i:04d}" for i in range(p * per_part, min(copies, (p + 1) * per_part))]
        if not ids:
            break
        n = len(ids)
        table = pa.table(
            {
                "doc_id": ids,
                "text": [text] * n,
                "n_bytes": pa.array([n_bytes] * n, pa.int64()),
                "source": ["tinyshakespeare"] * n,
                "path": [str(SHAKESPEARE)] * n,
                "offset": pa.array([0] * n, pa.int64()),
            }
        )
        outputs.append(write_parquet(table, folder / f"part-{p:05d}.parquet", row_group_rows=8))
    write_manifest(folder, make_manifest("clean", {}, outputs, {"rows": copies}))
    return copies * n_bytes


def step_train(clean: Path, out: Path, config: dict) -> dict:
    from tasks.tokenize import TokenizeConfig, train_tokenizer

    t0, c0 = time.perf_counter(), cpu_seconds()
    info = train_tokenizer(clean, out, TokenizeConfig(**config))
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
        "sample_bytes": info["sample_bytes"],
    }


def _bare(clean: Path, out: Path, config: dict, chunked: bool) -> dict:
    import pyarrow.parquet as pq
    import sentencepiece as spm

    from tasks.tokenize import TokenizeConfig, chunk_text, list_parts

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    texts = [t for p in list_parts(clean) for t in pq.read_table(p, columns=["text"]).column(0).to_pylist()]
    if chunked:
        chunk_bytes = TokenizeConfig(**config).chunk_bytes
        texts = [c for t in texts for c in chunk_text(t, chunk_bytes)]
    t0, c0 = time.perf_counter(), cpu_seconds()
    tokens = 0
    for t in texts:
        tokens += len(sp.encode(t))
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "tokens": tokens}


def step_bare(clean: Path, out: Path, config: dict) -> dict:
    return _bare(clean, out, config, chunked=False)


def step_bare_chunks(clean: Path, out: Path, config: dict) -> dict:
    return _bare(clean, out, config, chunked=True)


def step_encode(clean: Path, out: Path, config: dict) -> dict:
    from tasks.tokenize import TokenizeConfig, encode_part, finalize, list_parts
    from tasks.tokenize.tokenizer import tokenizer_info

    cfg = TokenizeConfig(**config)
    tok = tokenizer_info(out / "tokenizer.model", True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    parts = [encode_part(p, out / "tokenizer.model", out / "work", cfg) for p in list_parts(clean)]
    manifest = finalize(clean, out, tok, parts, cfg)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
        "tokens": manifest["counts"]["tokens"],
        "shards": len(manifest["outputs"]) - 1,
    }


STEPS = {"train": step_train, "bare": step_bare, "bare_chunks": step_bare_chunks, "encode": step_encode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="encoding threads (0 = all cores)")
    ap.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--clean", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.step:  # inside the subprocess
        figures = STEPS[args.step](args.clean, args.out, json.loads(args.config))
        print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))
        return

    config = {"vocab_size": args.vocab, "num_threads": args.threads}
    tmp = Path(tempfile.mkdtemp(prefix="forja-tokenize-bench-"))
    try:
        clean, out = tmp / "clean", tmp / "out"
        out.mkdir()
        total = make_clean_dir(clean, args.mb, args.parts)
        mb = total / 1e6
        print(f"corpus: {mb:.1f} MB in {args.parts} parts; vocab {args.vocab}; {os.cpu_count()} cores")
        print("(wall time counts whatever else the machine runs; cpu is this step's own work)")
        report: dict = {"corpus_mb": round(mb, 1), "vocab_size": args.vocab, "parts": args.parts}
        for step in ("train", "bare", "bare_chunks", "encode"):
            r = run_step(
                __file__,
                ["--step", step, "--clean", str(clean), "--out", str(out), "--config", json.dumps(config)],
            )
            r["mb_per_s"] = mb / r["seconds"] if step != "train" else r["sample_bytes"] / 1e6 / r["seconds"]
            report[step] = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
            print(
                f"{step:12s} {r['seconds']:7.2f} s  {r['mb_per_s']:6.2f} MB/s  cpu {r['cpu_s']:7.2f} s  "
                f"peak RSS {r['peak_rss_mb']:5.0f} MB"
            )
        for base in ("bare", "bare_chunks"):
            speedup = report[base]["seconds"] / report["encode"]["seconds"]
            report[f"speedup_vs_{base}"] = round(speedup, 2)
            print(f"tokenize (encode + shards) vs {base} (single-process sp.encode): {speedup:.2f}x")
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
