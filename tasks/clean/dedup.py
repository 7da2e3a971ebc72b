"""Exact and near-duplicate removal over the rows every shard kept (the corpus rules).

    dedup_shards(shard_results, work_dir, config) -> work_dir/dedup.parquet (the rows to drop) + counts

080_exact_dedup.sql groups the shards' `norm_key`s; 090_near_dedup.sql forms LSH buckets from the
shards' MinHash band keys (minhash.py), whose candidate pairs are screened with the signatures and
decided by their true shingle Jaccard here. The corpus-wide tables (`keys`, the band keys, the
candidate pairs) live in DuckDB, which spills to disk past its share of `memory_limit`; the
buckets are formed a few bands at a time; Python sees batches of pairs sized from the memory
setting, and the pairs it keeps and the candidates' shingle sets stream to Parquet files in the
work folder. What grows with the corpus in Python is the set of near-duplicates dropped (one int
each).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lm.fileio import atomic_path
from tasks.clean import minhash
from tasks.clean.arrays import np_values
from tasks.clean.chain import over_input
from tasks.clean.config import CleanConfig, as_config
from tasks.clean.engine import KEY_ORDER, connect
from tasks.clean.report import doc_key, snippet
from tasks.clean.rules import Rule, load_rules
from tasks.common import DUCKDB_SHARE, duckdb_failed, in_threads, memory_bytes, sql_list, sql_string

log = logging.getLogger("forja.clean")

PAIR_BATCH = 65536  # at most this many candidate pairs per numpy batch (2 x 128 B of 8-bit signature each)
MIN_PAIR_BATCH = 256
VERIFY_BATCH = 2048  # screened pairs whose texts are shingled per batch (2 texts each)
VERIFY_MARGIN = 0.2  # pairs whose estimate is this far below the threshold are verified too


def dedup_shards(
    shard_results: list[dict[str, Any]],
    work_dir: str | os.PathLike,
    config: CleanConfig | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Exact and near-duplicate removal over the rows every shard kept.

    Writes `work_dir/dedup.parquet` (the rows to drop: key, rule, reason, dup_of, similarity,
    n_bytes, and where they lie in the work files) and returns counts and examples per rule.
    The only table held for the whole corpus is `keys` (gid, shard, row, norm_key: 40 bytes a
    document, in DuckDB, which spills); band hashes stream from the work files, and the MinHash
    signatures (8 bits a bin: 128 bytes) are read for the candidate pairs alone.
    """
    config = as_config(config)
    work_dir = Path(work_dir)
    out = work_dir / "dedup.parquet"
    works = [r["work"] for r in shard_results]
    corpus_rules = {r.name: r for r in load_rules() if r.kind in ("corpus", "candidates")}
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    lap = _Laps()
    with connect(config, work_dir) as con:
        _work_view(con, works)
        con.execute(
            "CREATE TEMP TABLE drops (gid BIGINT, rule VARCHAR, reason VARCHAR, dup_of BIGINT, similarity DOUBLE)"
        )
        con.execute(
            f"CREATE TEMP TABLE keys AS SELECT row_number() OVER (ORDER BY {KEY_ORDER}, n_bytes, norm_key) AS gid, "
            "shard, row, norm_key FROM work WHERE _drop IS NULL"
        )
        rows_in = con.execute("SELECT count(*) FROM keys").fetchone()[0]
        remaining = rows_in
        lap("keys")
        for name in ("exact_dedup", "near_dedup"):
            if name not in corpus_rules or not config.is_on(name):
                continue
            r = corpus_rules[name]
            try:
                if r.kind == "corpus":
                    live = "SELECT gid, norm_key FROM keys WHERE gid NOT IN (SELECT gid FROM drops)"
                    con.execute(
                        f"INSERT INTO drops SELECT gid, {sql_string(name)}, reason, dup_of, similarity "
                        f"FROM ({over_input(live, r)})"
                    )
                    info: dict[str, Any] = {}
                else:
                    live = (
                        "SELECT k.gid, w.mh.bands AS bands FROM keys k JOIN work w USING (shard, row) "
                        "WHERE k.gid NOT IN (SELECT gid FROM drops)"
                    )
                    info = _near_dedup(con, r, live, config, work_dir)
            except duckdb.Error as e:
                raise duckdb_failed(f"the rule {r.path}", e, "clean", config.memory_limit) from e
            n = con.execute("SELECT count(*) FROM drops WHERE rule = ?", [name]).fetchone()[0]
            summary[name] = {
                "kind": r.kind,
                "rows_in": remaining,
                "dropped": int(n),
                "reasons": {"exact" if name == "exact_dedup" else "near": int(n)} if n else {},
                "examples": _dedup_examples(con, name, config.examples_per_rule),
                **info,
            }
            remaining -= n
            lap(name)
        with atomic_path(out, fsync=False) as tmp:
            con.execute(
                f'COPY (SELECT w.doc_id, w.source, w.path, w."offset", d.rule, d.reason, wo.doc_id AS dup_of, '
                f"d.similarity, w.n_bytes, w.filename, w.row AS file_row_number "
                f"FROM drops d JOIN keys k USING (gid) JOIN work w ON w.shard = k.shard AND w.row = k.row "
                f"JOIN keys o ON o.gid = d.dup_of JOIN work wo ON wo.shard = o.shard AND wo.row = o.row "
                f"ORDER BY d.gid) TO {sql_string(tmp)} (FORMAT parquet)"
            )
        lap("drops file")
    dt = time.perf_counter() - t0
    log.info(
        "dedup: %d rows -> %d in %.1fs %s (%s)",
        rows_in,
        remaining,
        dt,
        {k: v["dropped"] for k, v in summary.items()},
        lap,
    )
    return {"output": str(out), "rows_in": int(rows_in), "rows_out": int(remaining), "rules": summary}


def _work_view(con: duckdb.DuckDBPyConnection, works: list[str]) -> None:
    """`work`: every shard's work file, each row with (shard, row): its file's index and row number."""
    con.execute("CREATE TEMP TABLE shards (shard INTEGER, filename VARCHAR)")
    if works:
        con.executemany("INSERT INTO shards VALUES (?, ?)", list(enumerate(works)))
        con.execute(
            "CREATE TEMP VIEW work AS SELECT s.shard, w.file_row_number AS row, w.* "
            f"FROM read_parquet({sql_list(works)}, filename = true, file_row_number = true) w "
            "JOIN shards s USING (filename)"
        )
    else:  # no input parts: an empty view of the same shape
        con.execute(
            "CREATE TEMP VIEW work AS SELECT NULL::INTEGER AS shard, NULL::BIGINT AS row, NULL::VARCHAR AS doc_id, "
            'NULL::VARCHAR AS source, NULL::VARCHAR AS path, NULL::BIGINT AS "offset", NULL::VARCHAR AS text, '
            "NULL::BIGINT AS n_bytes, NULL::VARCHAR AS _drop, NULL::UHUGEINT AS norm_key, "
            f"NULL::{minhash.MINHASH_TYPE} AS mh, NULL::VARCHAR AS filename WHERE false"
        )


def _near_dedup(
    con: duckdb.DuckDBPyConnection, rule: Rule, live: str, config: CleanConfig, work_dir: Path
) -> dict[str, Any]:
    """Candidates from LSH buckets (SQL); their MinHash estimate screens them (with a margin below
    the threshold, as the estimate is noisy on short documents: standard deviation about 0.1 under
    20 shingles; the stored 8-bit signatures pass every pair the full ones would); the true
    shingle Jaccard of the screened pairs decides: each screened document's set of shingle hashes
    is computed once (a document is in several screened pairs), then the sets of every pair are
    compared. A document is removed only as a verified duplicate of a document that is kept, so
    every removal names its kept document and a measured similarity at or above the threshold
    (no chain of near-duplicates removes a document unlike the one kept).

    Out of core, step by step: the band keys live in a DuckDB table (which spills past its share
    of memory_limit); the buckets are formed one band at a time; the screened and the similar
    pairs, and the shingle sets, stream to Parquet files in work_dir, `pair_batch` pairs at a time
    (sized from memory_limit); the keep decision streams the similar pairs in (b, a) order and
    holds only the set of documents dropped so far. The log gives the seconds of each step."""
    t = config.near_dedup_threshold
    bands, _ = minhash.lsh_params(t, config.num_perm)
    batch = pair_batch(config)
    lap = _Laps()
    # one column per band: a pass reads its bands' columns alone, so the passes read the keys once
    columns = ", ".join(f"bands[{i}] AS b{i}" for i in range(1, bands + 1))
    con.execute(
        f"CREATE TEMP TABLE live_bands AS SELECT gid, {columns} FROM ({live}) WHERE bands IS NOT NULL"
    )
    con.execute("CREATE TEMP TABLE band_pairs (a BIGINT, b BIGINT)")
    n_live = con.execute("SELECT count(*) FROM live_bands").fetchone()[0]
    group = bands_per_pass(config, n_live, bands)
    for first in range(1, bands + 1, group):  # a few bands at a time: their buckets fit DuckDB's share
        some = ", ".join(f"b{i}" for i in range(first, min(first + group, bands + 1)))
        con.execute(
            f"INSERT INTO band_pairs {over_input(f'SELECT gid, [{some}] AS bands FROM live_bands', rule)}"
        )
    con.execute("DROP TABLE live_bands")
    lap("buckets")
    con.execute("CREATE TEMP TABLE pairs AS SELECT DISTINCT a, b FROM band_pairs")
    con.execute("DROP TABLE band_pairs")
    lap("distinct pairs")
    n_pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    info = {
        **minhash.describe(config.num_perm, config.shingle_words, t),
        "verify_margin": VERIFY_MARGIN,
        "candidate_pairs": int(n_pairs),
        "verified_pairs": 0,
        "similar_pairs": 0,
    }
    if not n_pairs:
        return info
    con.execute(
        "CREATE TEMP TABLE cand_sig AS SELECT k.gid, w.mh.sig AS sig FROM keys k JOIN work w USING (shard, row) "
        "WHERE k.gid IN (SELECT a FROM pairs UNION SELECT b FROM pairs)"
    )
    lap("signatures")
    screened_file = work_dir / "near-screened.parquet"
    reader = _both_sides(con, "pairs", "cand_sig", "sig", batch, then_drop="pairs")
    n_batches = 0
    with _PairWriter(screened_file, PAIR_SCHEMA) as out:
        for rb in reader:
            n_batches += 1
            sa = minhash.signatures_from_blobs(rb.column("sa"), config.num_perm)
            sb = minhash.signatures_from_blobs(rb.column("sb"), config.num_perm)
            ok = minhash.similarity(sa, sb) >= t - VERIFY_MARGIN
            out.write({c: np_values(rb.column(c)).astype(np.int64)[ok] for c in ("a", "b")})
    info["verified_pairs"] = out.rows
    con.execute("DROP TABLE cand_sig")
    con.execute("DROP TABLE half")
    lap("screen")
    if not out.rows:
        return info
    screened = f"read_parquet({sql_string(screened_file)})"
    # each screened document's shingle set, once (a document is in several pairs), to Parquet
    sets_file = work_dir / "near-sets.parquet"
    w, threads = config.shingle_words, verify_threads(config)
    reader = con.sql(
        "SELECT k.gid, w.text FROM keys k JOIN work w USING (shard, row) "
        f"WHERE k.gid IN (SELECT a FROM {screened} UNION SELECT b FROM {screened})"
    ).to_arrow_reader(VERIFY_BATCH)

    def shingle(rb: pa.RecordBatch) -> dict[str, Any]:
        return {"gid": np_values(rb.column("gid")), "shingles": minhash.shingle_sets(rb.column("text"), w)}

    with _PairWriter(sets_file, SETS_SCHEMA) as out:
        for cols in in_threads(shingle, reader, threads):
            out.write(cols)
    lap("shingle sets")
    similar_file = work_dir / "near-similar.parquet"
    sets = f"read_parquet({sql_string(sets_file)})"
    reader = _both_sides(con, screened, sets, "shingles", min(batch, VERIFY_BATCH))

    def verify(rb: pa.RecordBatch) -> dict[str, np.ndarray]:
        sim = minhash.set_jaccard(rb.column("sa"), rb.column("sb"))
        ok = sim >= t
        a, b = (np_values(rb.column(c)).astype(np.int64)[ok] for c in ("a", "b"))
        return {"a": a, "b": b, "similarity": sim[ok]}

    with _PairWriter(similar_file, SIMILAR_SCHEMA) as out:
        for cols in in_threads(verify, reader, threads):
            out.write(cols)
    con.execute("DROP TABLE half")
    info["similar_pairs"] = out.rows
    lap("verify")
    # engine figures: logged, never in the report (which the memory setting must not change)
    log.info("near_dedup: %d candidate pairs screened in %d batches of <= %d", n_pairs, n_batches, batch)
    # keep the first: in (b, a) order, streamed; only the set of dropped documents is held
    reader = con.sql(
        f"SELECT a, b, similarity FROM read_parquet({sql_string(similar_file)}) ORDER BY b, a"
    ).to_arrow_reader(batch)
    drops_file = work_dir / "near-drops.parquet"
    dropped: set[int] = set()
    with _PairWriter(drops_file, DROP_SCHEMA) as out:
        for rb in reader:
            gid, dup_of, similarity = keep_first(
                *(np_values(rb.column(c)) for c in ("a", "b", "similarity")), dropped
            )
            out.write({"gid": gid, "dup_of": dup_of, "similarity": similarity})
    con.execute(
        f"INSERT INTO drops SELECT gid, {sql_string(rule.name)}, 'near', dup_of, round(similarity, 4) "
        f"FROM read_parquet({sql_string(drops_file)})"
    )
    for f in (screened_file, sets_file, similar_file, drops_file):
        f.unlink()
    lap("keep")
    log.info("near_dedup: %s", lap)
    return info


def _both_sides(
    con: duckdb.DuckDBPyConnection, pairs: str, values: str, column: str, batch: int, then_drop: str = ""
) -> pa.RecordBatchReader:
    """Batches of the pairs (a, b) with the `column` of both documents (sa, sb), from `values`
    (gid, column), one join of BLOBs per query: DuckDB 2.0 spills one, but runs out of memory on
    two in one pipeline once both sides outgrow its share (the shingle sets at 10 GB with memory
    1GB; the signatures at 1 GB with memory 200MB, where the sets' single joins still do, their
    BLOBs being larger). The first join goes to the temporary table `half` (the caller drops it
    once read), then `then_drop`, a table the rest does not need."""
    con.execute(
        f"CREATE TEMP TABLE half AS SELECT p.a, p.b, x.{column} AS sa FROM {pairs} p JOIN {values} x ON x.gid = p.a"
    )
    if then_drop:
        con.execute(f"DROP TABLE {then_drop}")
    return con.sql(
        f"SELECT h.a, h.b, h.sa, y.{column} AS sb FROM half h JOIN {values} y ON y.gid = h.b"
    ).to_arrow_reader(batch)


class _Laps:
    """Seconds per step, for the log: `lap("step")` ends a step; str() lists them."""

    def __init__(self) -> None:
        self.t, self.steps = time.perf_counter(), []

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.steps.append((step, now - self.t))
        self.t = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {s:.1f}s" for step, s in self.steps)


def verify_threads(config: CleanConfig) -> int:
    """Threads for the exact check: numpy's sorts and searches, most of its time, release the GIL."""
    return config.threads or config.cores()


PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])
SETS_SCHEMA = pa.schema([("gid", pa.int64()), ("shingles", pa.large_binary())])
SIMILAR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("similarity", pa.float64())])
DROP_SCHEMA = pa.schema([("gid", pa.int64()), ("dup_of", pa.int64()), ("similarity", pa.float64())])


class _PairWriter:
    """Appends numpy columns to a Parquet file (a temporary file: no compression), counting rows."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema, self.rows = path, schema, 0

    def __enter__(self) -> _PairWriter:
        self.writer = pq.ParquetWriter(self.path, self.schema, compression="none")
        return self

    def write(self, cols: dict[str, np.ndarray]) -> None:
        self.writer.write_table(pa.table(cols, schema=self.schema))
        self.rows += len(next(iter(cols.values())))

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


BUCKET_ROW_BYTES = 64  # one (gid, band key) row while the buckets are formed, with DuckDB's overhead


def bands_per_pass(config: CleanConfig, n_docs: int, bands: int) -> int:
    """How many bands form their buckets in one query: all of them while their rows fit DuckDB's
    share of memory_limit, fewer on a corpus that would not (the passes then spill nothing)."""
    budget = memory_bytes(config.memory_limit) * DUCKDB_SHARE
    return int(max(1, min(bands, budget // max(1, n_docs * BUCKET_ROW_BYTES))))


def pair_batch(config: CleanConfig) -> int:
    """Candidate pairs per batch: each holds two 8-bit signatures (num_perm bytes) in Arrow and
    their numpy comparison; the batches may take an eighth of the memory DuckDB does not get."""
    per_pair = 2 * config.num_perm * 3
    budget = memory_bytes(config.memory_limit) * (1 - DUCKDB_SHARE) / 8
    return int(min(PAIR_BATCH, max(MIN_PAIR_BATCH, budget // per_pair)))


def keep_first(
    a: np.ndarray, b: np.ndarray, sim: np.ndarray, dropped: set[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documents to drop from verified similar pairs (a < b, gid order = keep order).

    Documents are decided in gid order: a document is dropped when it is similar to a document
    already kept, and names the first such (its smallest gid) with their similarity. One pass
    over the pairs sorted by (b, a): every pair into a document comes before the document's own
    pairs out, so its fate is settled when it is reached. The pairs may come in batches, in
    (b, a) order, with `dropped` (the documents dropped by the earlier batches) carried over.
    Returns (gid, dup_of, similarity) of the new drops.
    """
    dropped = set() if dropped is None else dropped
    order = np.lexsort((a, b))
    new: dict[int, tuple[int, float]] = {}
    for i in order.tolist():  # one Python step per similar pair: few, next to the corpus
        ai, bi = int(a[i]), int(b[i])
        if bi not in dropped and ai not in dropped:
            dropped.add(bi)
            new[bi] = (ai, float(sim[i]))
    gid = np.fromiter(new, np.int64, len(new))
    dup = np.fromiter((v[0] for v in new.values()), np.int64, len(new))
    similarity = np.fromiter((v[1] for v in new.values()), np.float64, len(new))
    return gid, dup, similarity


def _dedup_examples(con: duckdb.DuckDBPyConnection, rule: str, k: int) -> list[dict[str, Any]]:
    """The first `k` drops of a dedup rule (gid order), with snippets of the dropped and kept text."""
    if not k:
        return []
    rows = con.execute(
        "SELECT d.reason, d.similarity, k.shard, k.row, o.shard, o.row FROM drops d JOIN keys k USING (gid) "
        f"JOIN keys o ON o.gid = d.dup_of WHERE d.rule = ? ORDER BY d.gid LIMIT {k}",
        [rule],
    ).fetchall()
    docs = _work_rows(con, [(r[2], r[3]) for r in rows] + [(r[4], r[5]) for r in rows])
    out = []
    for reason, sim, s1, r1, s2, r2 in rows:
        doc, kept = docs[(s1, r1)], docs[(s2, r2)]
        out.append(
            {
                **doc_key(doc),
                "reason": reason,
                "dup_of": kept["doc_id"],
                "similarity": round(float(sim), 4),
                "text": snippet(doc["text"]),
                "kept_text": snippet(kept["text"]),
            }
        )
    return out


def _work_rows(con: duckdb.DuckDBPyConnection, where: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """A few work-file rows (key and text) by (shard, row)."""
    if not where:
        return {}
    wanted = "SELECT unnest(?::STRUCT(s INTEGER, r BIGINT)[]) AS x"
    cur = con.execute(
        'SELECT shard, row, doc_id, source, path, "offset", text FROM work '
        f"WHERE (shard, row) IN (SELECT unnest(x, recursive := true) FROM ({wanted}))",
        [[{"s": s, "r": r} for s, r in sorted(set(where))]],
    )
    names = [d[0] for d in cur.description]
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in cur.fetchall()}
