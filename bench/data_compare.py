"""datatrove's side of `forja bench data --sizes ... --compare datatrove` (issue #18).

    python bench/data_compare.py --corpus CORPUS_DIR --work WORK_DIR [--workers N]
                                                                    (run by bench/data_bench.py)

Runs, on the planted corpus.jsonl that forja's ingest + clean get, the datatrove pipeline that does
the same work (datatrove 0.10, its defaults, English) with as many workers as forja's clean has
cores. datatrove's readers give each task whole files, so the corpus is first cut at line ends into
one file per worker (counted in datatrove's time); the stages that read documents run one task per
file, ExactFindDedups and MinhashDedupCluster one task (as datatrove requires), the buckets stage one
task per band. Each stage starts after the one before:

    exact 1-2   ExactDedupSignature + ExactFindDedups on the lower-cased text (forja: ingest drops
                verbatim copies, clean's exact_dedup the re-cased ones: md5(lower(text)))
    filter      JsonlReader -> ExactDedupFilter -> GopherQualityFilter -> JsonlWriter (the rest)
    minhash 1-4 MinhashDedupSignature, Buckets, Cluster (5-grams of words, 14 bands x 8 hashes, the
                FineWeb settings), then MinhashDedupFilter over the rest

Every removed document goes to an exclusion writer; the last line printed is JSON: the seconds,
the documents kept, and per forja rule name (exact_dedup, quality, near_dedup) the sha256 doc_ids
of the removed documents (what ingest calls a doc_id), written to WORK/removed.json for
bench/data_bench.py to score against the planted pairs. Its CPU is sampled over the whole process
tree by the runner (measure.run_step_tree): getrusage here would miss the pool's workers. Imports
nothing from forja: it runs in whatever interpreter has datatrove (`--datatrove-python`), so
datatrove's dependencies never touch forja's environment (and `split_lines` is its own, not
tasks/ingest/plan.line_ranges).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path

RULES = {"exact": "exact_dedup", "gopher": "quality", "minhash": "near_dedup"}


def lower_text(doc) -> bytes:  # a module-level function: datatrove may pickle the config
    return doc.text.lower().encode()


def removed_ids(folder: Path) -> list[str]:
    """The sha256 doc_ids of the documents an exclusion writer wrote (JSONL, gzipped)."""
    ids = []
    for path in sorted(folder.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            ids += [hashlib.sha256(json.loads(line)["text"].encode()).hexdigest() for line in f]
    return ids


def split_lines(src: Path, folder: Path, parts: int) -> None:
    """`src` cut into `parts` files of about equal size, each ending at a line end."""
    folder.mkdir(parents=True)
    size = src.stat().st_size
    with open(src, "rb") as f:
        for i in range(parts):
            end = size * (i + 1) // parts
            with open(folder / f"part-{i:03d}.jsonl", "wb") as out:
                while f.tell() < end:
                    out.writelines(f.readlines(min(end - f.tell(), 1 << 24)))


def run(corpus: Path, work: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    shutil.rmtree(work, ignore_errors=True)
    w = {
        k: str(work / k)
        for k in ("exact_sigs", "exact_dups", "rest", "mh_sigs", "mh_buckets", "mh_ids", "out")
    }
    removed = {k: work / "removed" / k for k in RULES}
    exact = ExactDedupConfig(content_getter=lower_text)
    minhash = MinhashConfig()

    def reader(folder: str) -> JsonlReader:
        return JsonlReader(folder, glob_pattern="*.jsonl*")

    t0 = time.perf_counter()
    split_lines(corpus / "corpus.jsonl", work / "input", workers)
    stages = [
        [reader(str(work / "input")), ExactDedupSignature(w["exact_sigs"], config=exact)],
        [ExactFindDedups(w["exact_sigs"], w["exact_dups"], config=exact)],
        [
            reader(str(work / "input")),
            ExactDedupFilter(
                w["exact_dups"], config=exact, exclusion_writer=JsonlWriter(str(removed["exact"]))
            ),
            GopherQualityFilter(exclusion_writer=JsonlWriter(str(removed["gopher"]))),
            JsonlWriter(w["rest"]),
        ],
        [reader(w["rest"]), MinhashDedupSignature(w["mh_sigs"], config=minhash)],
        [MinhashDedupBuckets(w["mh_sigs"], w["mh_buckets"], config=minhash)],
        [MinhashDedupCluster(w["mh_buckets"], w["mh_ids"], config=minhash)],
        [
            reader(w["rest"]),
            MinhashDedupFilter(w["mh_ids"], exclusion_writer=JsonlWriter(str(removed["minhash"]))),
            JsonlWriter(w["out"]),
        ],
    ]
    for i, pipeline in enumerate(stages):
        # one task per input file; one for the two single-task steps; one per band for the buckets
        tasks = {1: 1, 4: minhash.num_buckets, 5: 1}.get(i, workers)
        log = str(work / "logs" / str(i))
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(tasks, workers), logging_dir=log).run()
    seconds = time.perf_counter() - t0
    ids = {RULES[k]: removed_ids(folder) for k, folder in removed.items()}
    (work / "removed.json").write_text(json.dumps(ids))
    kept = 0
    for path in Path(w["out"]).rglob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            kept += sum(1 for _ in f)
    from importlib.metadata import version

    return {
        "tool": f"datatrove {version('datatrove')}",
        "workers": workers,
        "seconds": seconds,
        "rows_out": kept,
        "dropped": {r: len(v) for r, v in ids.items()},
        "removed": str(work / "removed.json"),
    }


# ------------------------------------------------ in forja's interpreter: scoring and the table
def dropped_rows(removed: dict[str, list[str]]) -> list[dict]:
    """datatrove's removals as rows of clean's dropped.parquet (doc_id, rule, dup_of, similarity),
    for data_bench.score. Its exact-dedup removals are left out: a verbatim copy has its original's
    doc_id, so listing it would mark the kept original as removed (forja's ingest drops verbatim
    copies before clean, so its dropped.parquet never lists them); they are counted apart."""
    return [
        {"doc_id": d, "rule": rule, "dup_of": None, "similarity": None}
        for rule, ids in sorted(removed.items())
        if rule != "exact_dedup"
        for d in ids
    ]


def comparison(docs: int, forja: dict, datatrove: dict) -> list[str]:
    """The side-by-side lines: per tool wall s, CPU s of its process tree, docs/s, peak tree RSS,
    recall (all planted near pairs / those at the threshold), removals that were not planted; then
    datatrove / forja ratios; then, when datatrove's dedup dict has "shared", both recalls on the
    same planted pairs (each tool's own recall leaves out the pairs its other rules removed).

    `forja` and `datatrove`: {"tool", "seconds", "tree_cpu_s", "peak_tree_rss_mb", "dedup":
    data_bench.score's dict}."""
    lines = [
        f"{'tool':<18} {'wall s':>8} {'CPU s':>8} {'docs/s':>8} {'peak MB':>8} {'recall':>7} {'@thr':>6} "
        f"{'not planted':>11}"
    ]
    for r in (forja, datatrove):
        d = r["dedup"]
        lines.append(
            f"{r['tool']:<18} {r['seconds']:>8.1f} {r['tree_cpu_s']:>8.1f} {docs / r['seconds']:>8,.0f} "
            f"{r['peak_tree_rss_mb']:>8.0f} {d['recall']:>7} {d['recall_at_threshold']:>6} {d['false_removals']:>11,}"
        )
    lines.append(
        f"datatrove / forja: wall time x{datatrove['seconds'] / forja['seconds']:.2f}, "
        f"CPU x{datatrove['tree_cpu_s'] / forja['tree_cpu_s']:.2f}, "
        f"peak tree RSS x{datatrove['peak_tree_rss_mb'] / forja['peak_tree_rss_mb']:.2f}, "
        f"recall {datatrove['dedup']['recall']} vs {forja['dedup']['recall']}"
    )
    if shared := datatrove["dedup"].get("shared"):
        f, d = shared["forja"], shared["datatrove"]
        lines.append(
            f"on the same {f['planted_near']:,} planted pairs ({f['planted_near_at_threshold']:,} at the "
            f"threshold) that neither tool's other rules removed, found when near dedup removed either "
            f"document: recall forja {f['recall']} / "
            f"{f['recall_at_threshold']}, datatrove {d['recall']} / {d['recall_at_threshold']}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="the folder holding corpus.jsonl")
    ap.add_argument("--work", type=Path, required=True, help="datatrove's work folder (replaced)")
    ap.add_argument("--workers", type=int, default=1, help="processes (and input files)")
    a = ap.parse_args()
    print(json.dumps(run(a.corpus, a.work, a.workers)))


if __name__ == "__main__":
    main()
