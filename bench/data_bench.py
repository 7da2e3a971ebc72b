"""The whole data path on >= 100 MB: ingest -> clean -> tokenize, against a bare SentencePiece encode.

    python bench/data_bench.py [--mb 100] [--files 8] [--vocab 4096] [--keep DIR]
    forja bench data [--mb 100]
    forja bench data --sizes 200MB,1GB [--memory 2GB] [--workers 0] [--compare-workers 2] [--keep DIR]
                     [--skip-tokenize] [--compare datatrove [--datatrove-python PATH]]

With --sizes (issue #18): a planted JSONL corpus per size (make_jsonl), ingest + clean (+ tokenize,
default settings, unless --skip-tokenize; its time is not in docs/s), each step's
peak tree RSS, throughput, and near-dedup recall and false removals scored against the planted
pairs (score); with --compare datatrove, datatrove's exact dedup + Gopher quality + MinHash on the
same corpus in the interpreter --datatrove-python (bench/data_compare.py), scored the same way and
printed side by side; see bench/README.md "Data path at scale". Without it:

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

from measure import cpu_seconds, peak_rss_mb, run_step, run_step_tree  # noqa: E402

# ---------------------------------------------------------------- planted corpus, two sizes
SIZE_UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
PLANT = {"exact": 0.03, "recased": 0.01, "near": 0.05}  # shares of documents that are copies


def parse_size(s: str) -> int:
    """'200MB', '1GB', '1.5GB' -> bytes (decimal units, as the figures are printed)."""
    s = s.strip().upper()
    for unit, mult in SIZE_UNITS.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(float(s))


def make_jsonl(folder: Path, size: int, seed: int = 0, threshold: float = 0.8) -> dict:
    """A deterministic JSONL corpus of about `size` bytes of text, streamed to disk (bounded memory).

    Base documents are 3-16 speeches of tinyshakespeare drawn at random (1% symbol soup for the
    quality rule); planted among them, copies of a recent base document: verbatim (ingest drops
    them), re-cased (clean's exact dedup) and near copies with one to three word edits (deleted,
    doubled or swapped words). `planted.jsonl` lists every copy: its doc_id (the sha256 of its
    text, as ingest computes it), its original's, the kind and, for near copies, the true shingle
    Jaccard of the pair (tasks/clean/minhash.exact_jaccard: what clean's verification measures).
    """
    import hashlib
    import random

    import pyarrow as pa
    from clean_bench import SHAKESPEARE

    from tasks.clean.minhash import exact_jaccard

    rng = random.Random(seed)
    paras = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    recent: list[str] = []
    counts = dict.fromkeys(("base", "junk", *PLANT), 0)
    near: list[tuple[str, str, str, str]] = []  # (copy id, original id, copy, original)
    total = 0

    def sha(t: str) -> str:
        return hashlib.sha256(t.encode()).hexdigest()

    def flush_near(planted) -> None:
        if not near:
            return
        sims = exact_jaccard(pa.array([n[2] for n in near]), pa.array([n[3] for n in near]), 5)
        for (c, o, _, _), s in zip(near, sims, strict=True):
            planted.write(
                json.dumps({"doc_id": c, "orig": o, "kind": "near", "jaccard": round(float(s), 4)}) + "\n"
            )
        near.clear()

    with (
        open(folder / "corpus.jsonl", "w", encoding="utf-8") as f,
        open(folder / "planted.jsonl", "w") as planted,
    ):
        while total < size:
            r = rng.random()
            kind = "base"
            if r < PLANT["exact"] and recent:
                kind, orig = "exact", rng.choice(recent)
                doc = orig
            elif r < PLANT["exact"] + PLANT["recased"] and recent:
                kind, orig = "recased", rng.choice(recent)
                doc = orig.upper()
            elif r < PLANT["exact"] + PLANT["recased"] + PLANT["near"] and recent:
                kind, orig = "near", rng.choice(recent)
                words = orig.split(" ")
                for _ in range(rng.randint(1, 3)):
                    j = rng.randrange(len(words))
                    op = rng.randrange(3)
                    if op == 0 and len(words) > 1:
                        del words[j]
                    elif op == 1:
                        words.insert(j, words[j])
                    else:
                        k = rng.randrange(len(words))
                        words[j], words[k] = words[k], words[j]
                doc = " ".join(words)
                if doc == orig:
                    doc += " Amen."
            elif r < 0.10:
                kind = "junk"
                doc = "".join(rng.choice("#$%^&*(){}[]<>~|=+-_/\\") for _ in range(rng.randrange(50, 2000)))
            else:
                doc = "\n\n".join(rng.sample(paras, rng.choice([3, 4, 6, 8, 12, 16])))
                recent.append(doc)
                if len(recent) > 2000:
                    recent.pop(rng.randrange(len(recent)))
            counts[kind] += 1
            f.write(json.dumps({"text": doc}) + "\n")
            total += len(doc.encode())
            if kind in ("exact", "recased"):
                planted.write(json.dumps({"doc_id": sha(doc), "orig": sha(orig), "kind": kind}) + "\n")
            elif kind == "near":
                near.append((sha(doc), sha(orig), doc, orig))
                if len(near) >= 4096:
                    flush_near(planted)
        flush_near(planted)
    return {"bytes": total, "docs": sum(counts.values()), "counts": counts}


def score(work: Path, threshold: float, dropped_file: Path | None = None, also: Path | None = None) -> dict:
    """Recall on the planted near copies and the removals that were not planted (with their measured
    similarity), from clean's dropped.parquet (or `dropped_file`: another tool's removals, whose
    near removals may have no dup_of: then removing either document of a planted pair finds it);
    in DuckDB, so memory stays flat at any size.

    The recall counts the planted pairs neither of whose documents another rule removed; with
    `also` (the other tool's dropped file), neither tool's other rules, and a pair counts as found
    when near dedup removed either document, whatever it names as kept (as for a tool without
    dup_of): two tools scored with each other's file as `also` are scored on the same pairs by the
    same rule."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    con.execute(f"SET temp_directory = '{work / 'score-spill'}'")
    planted = f"read_json('{work / 'corpus' / 'planted.jsonl'}', columns = {{doc_id: 'VARCHAR', orig: 'VARCHAR', kind: 'VARCHAR', jaccard: 'DOUBLE'}})"
    dropped = f"read_parquet('{dropped_file or work / 'clean' / 'dropped.parquet'}')"
    con.execute(f"CREATE TABLE p AS SELECT DISTINCT ON (doc_id) * FROM {planted}")
    con.execute(f"CREATE TABLE d AS SELECT doc_id, rule, dup_of, similarity FROM {dropped}")
    other = "SELECT doc_id FROM d WHERE rule <> 'near_dedup'"
    if also is not None:
        other += f" UNION SELECT doc_id FROM read_parquet('{also}') WHERE rule <> 'near_dedup'"
    con.execute(f"CREATE TABLE other AS {other}")
    near = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE jaccard >= ?), "
        "count(*) FILTER (WHERE d.doc_id IS NOT NULL OR o.doc_id IS NOT NULL), "
        "count(*) FILTER (WHERE jaccard >= ? AND (d.doc_id IS NOT NULL OR o.doc_id IS NOT NULL)) "
        "FROM p LEFT JOIN d ON d.doc_id = p.doc_id AND d.rule = 'near_dedup' "
        "LEFT JOIN d o ON o.doc_id = p.orig AND o.rule = 'near_dedup' "
        f"AND {'true' if also else '(o.dup_of = p.doc_id OR o.dup_of IS NULL)'} "
        "WHERE p.kind = 'near' AND p.doc_id NOT IN (SELECT doc_id FROM other) "
        "AND p.orig NOT IN (SELECT doc_id FROM other)",
        [threshold, threshold],
    ).fetchone()
    # A removal is planted when a planted pair links it to the document it names (either way), when it
    # is a planted near copy, or (no dup_of) when it is the original of one. Four NOT EXISTS, each an
    # equality join (a hash anti-join), rather than one NOT EXISTS over the four ORed: DuckDB runs an
    # OR of joins as a nested loop, removals x planted (at 10 GB, 378k x 556k: half an hour).
    false = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE similarity < ?), min(similarity), median(similarity) "
        "FROM d WHERE rule = 'near_dedup' "
        "AND NOT EXISTS (SELECT 1 FROM p WHERE p.doc_id = d.doc_id AND p.orig = d.dup_of) "
        "AND NOT EXISTS (SELECT 1 FROM p WHERE p.doc_id = d.dup_of AND p.orig = d.doc_id) "
        "AND NOT EXISTS (SELECT 1 FROM p WHERE p.doc_id = d.doc_id AND p.kind = 'near') "
        "AND NOT (d.dup_of IS NULL AND EXISTS (SELECT 1 FROM p WHERE p.orig = d.doc_id AND p.kind = 'near'))",
        [threshold],
    ).fetchone()
    exact = con.execute("SELECT count(*) FROM d WHERE rule = 'exact_dedup'").fetchone()[0]
    con.close()
    return {
        "planted_near": near[0],
        "planted_near_at_threshold": near[1],
        "recall": round(near[2] / near[0], 4) if near[0] else None,
        "recall_at_threshold": round(near[3] / near[1], 4) if near[1] else None,
        "false_removals": false[0],
        "false_below_threshold": false[1],
        "false_min_similarity": false[2],
        "false_median_similarity": false[3],
        "clean_exact_dedup": exact,
    }


def planted_step(name: str, work: Path, memory: str, workers: int, clean_out: str = "clean") -> dict:
    t0, c0 = time.perf_counter(), cpu_seconds()
    out: dict = {}
    if name == "ingest":
        from tasks.ingest import IngestConfig, run_ingest

        m = run_ingest(
            [str(work / "corpus" / "corpus.jsonl")],
            work / "ingest",
            IngestConfig(memory_limit=memory, workers=workers or None),  # 0: all the cores
        )
        out = {
            "docs": m["counts"]["total"]["documents"],
            "ingest_exact": m["counts"]["run"].get("duplicates"),
        }
    elif name == "clean":
        from tasks.clean import CleanConfig, run_clean

        cfg = CleanConfig(memory_limit=memory, workers=workers or None)  # 0: all the cores
        m = run_clean(work / "ingest", work / clean_out, cfg)
        out = {
            "rows_in": m["counts"]["rows_in"],
            "rows_out": m["counts"]["rows_out"],
            "dropped": m["counts"]["dropped"],
        }
    elif name == "tokenize":  # the default tokenizer settings: BPE 4096 trained on a 20 MB sample
        from tasks.tokenize import TokenizeConfig, run_tokenize

        shutil.rmtree(work / "tokens", ignore_errors=True)
        m = run_tokenize(work / "clean", work / "tokens", TokenizeConfig())
        out = {"tokens": m["counts"]["tokens"], "docs": m["counts"]["docs"]}
    elif name == "score":
        from tasks.clean import CleanConfig

        out = score(work, CleanConfig().near_dedup_threshold)
    elif name == "score-datatrove":
        import pyarrow as pa
        import pyarrow.parquet as pq
        from data_compare import dropped_rows

        from tasks.clean import CleanConfig

        removed = json.loads((work / "datatrove" / "removed.json").read_text())
        schema = pa.schema(
            [
                ("doc_id", pa.string()),
                ("rule", pa.string()),
                ("dup_of", pa.string()),
                ("similarity", pa.float64()),
            ]
        )
        pq.write_table(
            pa.Table.from_pylist(dropped_rows(removed), schema), work / "datatrove-dropped.parquet"
        )
        threshold, theirs = CleanConfig().near_dedup_threshold, work / "datatrove-dropped.parquet"
        out = score(work, threshold, theirs)
        out["clean_exact_dedup"] = len(removed.get("exact_dedup", []))
        # both tools on the same planted pairs: those that neither tool's other rules removed
        ours = work / "clean" / "dropped.parquet"
        out["shared"] = {
            "forja": score(work, threshold, None, theirs),
            "datatrove": score(work, threshold, theirs, ours),
        }
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, **out}


def check_datatrove(python: str) -> None:
    """Fail in one line, before any work, when `python` cannot import datatrove's pipeline steps."""
    import subprocess

    probe = "import datatrove.pipeline.dedup.minhash, datatrove.pipeline.filters, spacy"
    res = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if res.returncode != 0:
        reason = (res.stderr.strip().splitlines() or ["not found"])[-1]
        raise SystemExit(
            f"--compare datatrove: {python} cannot import datatrove ({reason}); install the `datatrove` "
            "extra into a venv of its own and give its interpreter with --datatrove-python PATH"
        )


def run_sizes(a: argparse.Namespace) -> None:
    """Ingest + clean at each size of --sizes; one JSON line per size, then a table."""
    results = []
    for size in [s for s in a.sizes.split(",") if s]:
        work = (a.keep / size) if a.keep else Path(tempfile.mkdtemp(prefix=f"forja-data-{size}-"))
        try:
            t0 = time.perf_counter()
            reuse = work / "corpus" / "corpus.json"
            if a.keep and reuse.is_file():  # the same size gives the same corpus: kept from a run before
                corpus = json.loads(reuse.read_text())
                for sub in ("ingest", "clean", f"clean-w{a.compare_workers}", "tokens"):
                    shutil.rmtree(work / sub, ignore_errors=True)
            else:
                shutil.rmtree(work, ignore_errors=True)
                corpus = make_jsonl(work / "corpus", parse_size(size))
                reuse.write_text(json.dumps(corpus))
            gen_s = time.perf_counter() - t0
            args = ["--work", str(work), "--memory", a.memory, "--workers", str(a.workers)]
            names = ("ingest", "clean") if a.skip_tokenize else ("ingest", "clean", "tokenize")
            steps = {s: run_step_tree(__file__, ["--planted-step", s, *args]) for s in names}
            if a.compare_workers and a.compare_workers != a.workers:  # the same clean, other workers
                other = ["--work", str(work), "--memory", a.memory, "--workers", str(a.compare_workers)]
                other += ["--clean-out", f"clean-w{a.compare_workers}"]
                steps[f"clean_w{a.compare_workers}"] = run_step_tree(
                    __file__, ["--planted-step", "clean", *other]
                )
            scored = run_step(__file__, ["--planted-step", "score", *args])
            if a.compare == "datatrove":  # the same corpus through datatrove, in its own interpreter
                cores = a.workers or len(os.sched_getaffinity(0))  # as many as clean had
                dt_args = ["--corpus", str(work / "corpus"), "--work", str(work / "datatrove")]
                dt = run_step_tree(
                    ROOT / "bench" / "data_compare.py",
                    [*dt_args, "--workers", str(cores)],
                    python=a.datatrove_python,
                )
                dt["dedup"] = run_step(__file__, ["--planted-step", "score-datatrove", *args])
        finally:
            if a.keep is None:
                shutil.rmtree(work, ignore_errors=True)
        mb = corpus["bytes"] / 1e6
        secs = steps["ingest"]["seconds"] + steps["clean"]["seconds"]  # docs/s, MB/s: ingest + clean
        res = {
            "size": size,
            "input_mb": round(mb, 1),
            "docs": corpus["docs"],
            "planted": corpus["counts"],
            "generate_s": round(gen_s, 1),
            "memory": a.memory,
            "workers": a.workers,
            "steps": steps,
            "seconds": round(secs, 1),
            "docs_per_s": round(corpus["docs"] / secs),
            "mb_per_s": round(mb / secs, 2),
            "peak_tree_rss_mb": max(s["peak_tree_rss_mb"] for s in steps.values()),
            "dedup": scored,
            "loadavg": os.getloadavg()[0],
        }
        if a.compare == "datatrove":
            res["datatrove"] = dt
        results.append(res)
        print(json.dumps(res), flush=True)
    print(
        f"{'size':>6} {'MB':>8} {'docs':>10} {'ingest s':>9} {'clean s':>8} {'docs/s':>8} {'MB/s':>6} "
        f"{'peak MB':>8} {'recall':>7} {'@thr':>6} {'false':>6} {'<thr':>5}  peak MB ingest/clean/tokenize (tokenize s)"
    )
    for r in results:
        d = r["dedup"]
        print(
            f"{r['size']:>6} {r['input_mb']:>8.1f} {r['docs']:>10,} {r['steps']['ingest']['seconds']:>9.1f} "
            f"{r['steps']['clean']['seconds']:>8.1f} {r['docs_per_s']:>8,} {r['mb_per_s']:>6.2f} "
            f"{r['peak_tree_rss_mb']:>8.0f} {d['recall']:>7} {d['recall_at_threshold']:>6} "
            f"{d['false_removals']:>6} {d['false_below_threshold']:>5}  "
            + "/".join(
                f"{r['steps'][k]['peak_tree_rss_mb']:.0f}"
                for k in ("ingest", "clean", "tokenize")
                if k in r["steps"]
            )
            + (f" ({r['steps']['tokenize']['seconds']:.1f})" if "tokenize" in r["steps"] else "")
        )
    for r in results:
        other = next((k for k in r["steps"] if k.startswith("clean_w")), None)
        if other:
            c1, c2 = r["steps"]["clean"], r["steps"][other]
            print(
                f"{r['size']}: clean with {other[7:]} workers vs {r['workers'] or 'all cores'}: "
                f"{c1['seconds'] / c2['seconds']:.2f}x "
                f"as fast (cpu {c2['cpu_s']:.0f} s vs {c1['cpu_s']:.0f} s, peak tree RSS "
                f"{c2['peak_tree_rss_mb']:.0f} vs {c1['peak_tree_rss_mb']:.0f} MB), load {r['loadavg']:.1f}"
            )
    for r in results:
        if "datatrove" in r:
            from data_compare import comparison

            forja = {"tool": "forja ingest+clean", "seconds": r["seconds"], "dedup": r["dedup"]}
            forja["peak_tree_rss_mb"] = max(r["steps"][k]["peak_tree_rss_mb"] for k in ("ingest", "clean"))
            forja["tree_cpu_s"] = sum(r["steps"][k]["tree_cpu_s"] for k in ("ingest", "clean"))
            print(f"{r['size']}, load {r['loadavg']:.1f}:")
            print(
                "\n".join(
                    "  " + line
                    for line in comparison(
                        r["docs"], forja, {"tool": r["datatrove"]["tool"], **r["datatrove"]}
                    )
                )
            )
    if len(results) > 1:
        a0, b0 = results[0], results[-1]
        print(
            f"{b0['size']} vs {a0['size']}: peak tree RSS x{b0['peak_tree_rss_mb'] / a0['peak_tree_rss_mb']:.2f}, "
            f"time x{b0['seconds'] / a0['seconds']:.2f} for x{b0['input_mb'] / a0['input_mb']:.2f} the text"
        )


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
    ap.add_argument("--sizes", help="ingest + clean a planted JSONL corpus of each size, e.g. 200MB,1GB")
    ap.add_argument("--memory", default="2GB", help="--sizes: the stages' memory setting")
    ap.add_argument("--workers", type=int, default=0, help="--sizes: clean's cores (0: all)")
    ap.add_argument("--compare-workers", type=int, help="--sizes: clean again with this many cores")
    ap.add_argument("--skip-tokenize", action="store_true", help="--sizes: ingest + clean only")
    ap.add_argument(
        "--compare",
        choices=["datatrove"],
        help="--sizes: also run datatrove's exact dedup + Gopher quality + MinHash on the same corpus",
    )
    ap.add_argument(
        "--datatrove-python",
        default=sys.executable,
        help="--compare datatrove: an interpreter that has datatrove (the `datatrove` extra; its own venv)",
    )
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--planted-step", help=argparse.SUPPRESS)
    ap.add_argument("--clean-out", default="clean", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.planted_step:
        print(json.dumps(planted_step(a.planted_step, a.work, a.memory, a.workers, a.clean_out)))
        return
    if a.sizes:
        if a.compare == "datatrove":
            check_datatrove(a.datatrove_python)
        return run_sizes(a)
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
