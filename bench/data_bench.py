"""The whole data path on >= 100 MB: ingest -> clean -> tokenize, against a bare SentencePiece encode.

    python bench/data_bench.py [--mb 100] [--files 8] [--vocab 4096] [--keep DIR]
    forja bench data [--mb 100]

Builds a corpus of text files from ../shared/corpora/tinyshakespeare.txt with generated exact and
near duplicates, junk, mojibake, PII and stray whitespace (bench/clean_bench.py's generator), one
document per `%` line-separated block. Then, each step in a fresh interpreter (so each peak RSS is
its own):

    ingest    run_ingest over the folder (split=percent_line)
    clean     run_clean, default rules
    tokenize  run_tokenize: trains a BPE tokenizer on a 20 MB sample, encodes on all cores, writes shards
    bare      the same cleaned documents through one `sp.encode(text)` call each, one thread, with
              the tokenizer the tokenize step trained: the reference every stage is compared with

and prints MB/s of input text per stage and end to end, peak RSS, and the ratios the targets are
stated in: tokenize vs bare encode (target: faster), data path vs bare encode (target: <= 2x the
bare encode's time), peak RSS (target: < 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import cpu_seconds, peak_rss_mb, run_step  # noqa: E402


def build(folder: Path, mb: float, files: int) -> int:
    from clean_bench import make_corpus

    docs = make_corpus(mb)
    folder.mkdir(parents=True)
    per = -(-len(docs) // files)
    total = 0
    for i in range(files):
        chunk = [d.replace("\n%\n", "\n%%\n") for d in docs[i * per : (i + 1) * per]]
        data = "\n%\n".join(chunk) + "\n"
        (folder / f"corpus-{i:02d}.txt").write_text(data, encoding="utf-8")
        total += len(data.encode())
    return total


def step(name: str, work: Path, vocab: int) -> dict:
    t0, c0 = time.perf_counter(), cpu_seconds()
    out: dict = {}
    if name == "ingest":
        from tasks.ingest import IngestConfig, run_ingest

        m = run_ingest([str(work / "corpus")], work / "ingest", IngestConfig(split="percent_line"))
        out = {"docs": m["counts"]["total"]["documents"], "quarantined": m["counts"]["run"]["quarantined"]}
    elif name == "clean":
        from tasks.clean import CleanConfig, run_clean

        m = run_clean(work / "ingest", work / "clean", CleanConfig())
        out = {"rows_out": m["counts"]["rows_out"], "dropped": m["counts"]["dropped"]}
    elif name == "tokenize":
        import logging
        import re

        from tasks.tokenize import TokenizeConfig, run_tokenize

        lines: list[str] = []  # the stage logs how long training the tokenizer took

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        logging.getLogger("forja").addHandler(Keep())
        logging.getLogger("forja").setLevel(logging.INFO)
        m = run_tokenize(work / "clean", work / "tokens", TokenizeConfig(vocab_size=vocab))
        trained = [re.search(r"trained the tokenizer .* in ([0-9.]+)s", x) for x in lines]
        out = {"tokens": m["counts"]["tokens"], "train_tokenizer_s": next(float(t[1]) for t in trained if t)}
    elif name == "bare":
        import pyarrow.parquet as pq
        import sentencepiece as spm

        from tasks.tokenize import list_parts

        sp = spm.SentencePieceProcessor(model_file=str(work / "tokens" / "tokenizer.model"))
        texts = [
            t
            for p in list_parts(work / "clean")
            for t in pq.read_table(p, columns=["text"])["text"].to_pylist()
        ]
        t0, c0 = time.perf_counter(), cpu_seconds()  # the encode alone
        out = {"tokens": sum(len(sp.encode(t)) for t in texts), "bytes": sum(len(t.encode()) for t in texts)}
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
        "peak_rss_mb": peak_rss_mb(),
        **out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step:
        print(json.dumps(step(a.step, a.work, a.vocab)))
        return
    work = a.keep or Path(tempfile.mkdtemp(prefix="forja-data-bench-"))
    try:
        if (work / "corpus").exists():
            shutil.rmtree(work)
        n_bytes = build(work / "corpus", a.mb, a.files)
        steps = ("ingest", "clean", "tokenize", "bare")
        args = ["--work", str(work), "--vocab", str(a.vocab)]
        res = {name: run_step(__file__, ["--step", name, *args]) for name in steps}
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    mb = n_bytes / 1e6
    path_s = sum(res[s]["seconds"] for s in ("ingest", "clean", "tokenize"))
    report = {
        "input_mb": round(mb, 1),
        "cores": os.cpu_count(),
        "steps": res,
        "mb_per_s": {s: round(mb / res[s]["seconds"], 2) for s in ("ingest", "clean", "tokenize")}
        | {
            "data_path": round(mb / path_s, 2),
            "bare_encode": round(res["bare"]["bytes"] / 1e6 / res["bare"]["seconds"], 2),
        },
        "tokenize_vs_bare_encode": round(res["bare"]["seconds"] / res["tokenize"]["seconds"], 2),
        # the stage without training the tokenizer (a reused tokenizer, as retrain does by default)
        "tokenize_encode_only_vs_bare_encode": round(
            res["bare"]["seconds"] / (res["tokenize"]["seconds"] - res["tokenize"]["train_tokenizer_s"]), 2
        ),
        "data_path_over_bare_encode": round(path_s / res["bare"]["seconds"], 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in res.values()), 1),
    }
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"input: {mb:.1f} MB of text in {a.files} files, {os.cpu_count()} cores")
    for s in ("ingest", "clean", "tokenize", "bare"):
        r = res[s]
        print(
            f"  {s:<9} {r['seconds']:7.1f} s  {mb / r['seconds'] if s != 'bare' else report['mb_per_s']['bare_encode']:6.2f} MB/s"
            f"  cpu {r['cpu_s']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB"
        )
    print(f"  data path {path_s:7.1f} s  {report['mb_per_s']['data_path']:6.2f} MB/s")
    print(f"tokenize is {report['tokenize_vs_bare_encode']:.2f}x the bare encode's speed (target > 1)")
    print(
        f"  of which training the tokenizer {res['tokenize']['train_tokenizer_s']:.1f} s; the rest of the stage "
        f"is {report['tokenize_encode_only_vs_bare_encode']:.2f}x the bare encode's speed"
    )
    print(f"data path takes {report['data_path_over_bare_encode']:.2f}x the bare encode's time (target <= 2)")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB (target < 1024)")


if __name__ == "__main__":
    main()
