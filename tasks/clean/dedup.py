"""Exact and near-duplicate removal over the rows every shard kept (the corpus rules).

    dedup_shards(shard_results, work_dir, config) -> work_dir/dedup.parquet (the rows to drop) + counts

080_exact_dedup.sql groups the shards' `norm_key`s; 090_near_dedup.sql forms LSH buckets from the
shards' MinHash band keys (minhash.py), whose candidate pairs are screened with the signatures and
decided by their true shingle Jaccard here. The only table held for the whole corpus is `keys`;
everything else streams from the shard work files or spills inside DuckDB.
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

from lm.fileio import atomic_path
from tasks.clean import minhash
from tasks.clean.arrays import np_values
from tasks.clean.chain import over_input, sql_list, sql_string
from tasks.clean.config import CleanConfig, as_config
from tasks.clean.engine import KEY_ORDER, connect
from tasks.clean.report import doc_key, snippet
from tasks.clean.rules import Rule, load_rules
from tasks.common import StageError

log = logging.getLogger("forja.clean")

PAIR_BATCH = 65536  # candidate pairs compared per numpy batch (2 x 512 B of signature each)
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
    document, in DuckDB, which spills); band hashes stream from the work files, and full MinHash
    signatures are read for the candidate pairs alone.
    """
    config = as_config(config)
    work_dir = Path(work_dir)
    out = work_dir / "dedup.parquet"
    works = [r["work"] for r in shard_results]
    corpus_rules = {r.name: r for r in load_rules() if r.kind in ("corpus", "candidates")}
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
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
                    info = _near_dedup(con, r, live, config)
            except duckdb.Error as e:
                raise StageError(f"{r.path}: the rule failed: {e}") from e
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
        with atomic_path(out, fsync=False) as tmp:
            con.execute(
                f'COPY (SELECT w.doc_id, w.source, w.path, w."offset", d.rule, d.reason, wo.doc_id AS dup_of, '
                f"d.similarity, w.n_bytes, w.filename, w.row AS file_row_number "
                f"FROM drops d JOIN keys k USING (gid) JOIN work w ON w.shard = k.shard AND w.row = k.row "
                f"JOIN keys o ON o.gid = d.dup_of JOIN work wo ON wo.shard = o.shard AND wo.row = o.row "
                f"ORDER BY d.gid) TO {sql_string(tmp)} (FORMAT parquet)"
            )
    dt = time.perf_counter() - t0
    log.info(
        "dedup: %d rows -> %d in %.1fs %s",
        rows_in,
        remaining,
        dt,
        {k: v["dropped"] for k, v in summary.items()},
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


def _near_dedup(con: duckdb.DuckDBPyConnection, rule: Rule, live: str, config: CleanConfig) -> dict[str, Any]:
    """Candidates from LSH buckets (SQL); their MinHash estimate screens them (with a margin below
    the threshold, as the estimate is noisy on short documents: standard deviation about 0.1 under
    20 shingles); the true shingle Jaccard of the screened pairs decides. A document is removed
    only as a verified duplicate of a document that is kept, so every removal names its kept
    document and a measured similarity at or above the threshold (no chain of near-duplicates
    removes a document unlike the one kept). Signatures and texts stay in DuckDB (which spills
    past memory_limit); Python sees one batch of pairs at a time."""
    t = config.near_dedup_threshold
    con.execute(f"CREATE TEMP TABLE pairs AS {over_input(live, rule)}")
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
    screened = [np.zeros((0, 2), np.int64)]
    reader = con.sql(
        "SELECT p.a, p.b, x.sig AS sa, y.sig AS sb FROM pairs p "
        "JOIN cand_sig x ON x.gid = p.a JOIN cand_sig y ON y.gid = p.b"
    ).to_arrow_reader(PAIR_BATCH)
    for batch in reader:
        sa = minhash.signatures_from_blobs(batch.column("sa"), config.num_perm)
        sb = minhash.signatures_from_blobs(batch.column("sb"), config.num_perm)
        ok = minhash.similarity(sa, sb) >= t - VERIFY_MARGIN
        ab = [np_values(batch.column(c)).astype(np.int64)[ok] for c in ("a", "b")]
        screened.append(np.stack(ab, axis=1))
    con.execute("DROP TABLE cand_sig")
    pairs = np.concatenate(screened)
    info["verified_pairs"] = len(pairs)
    if not len(pairs):
        return info
    con.register("screened", pa.table({"a": pairs[:, 0], "b": pairs[:, 1]}))
    con.execute(
        "CREATE TEMP TABLE cand_text AS SELECT k.gid, w.text FROM keys k JOIN work w USING (shard, row) "
        "WHERE k.gid IN (SELECT a FROM screened UNION SELECT b FROM screened)"
    )
    similar = []
    reader = con.sql(
        "SELECT p.a, p.b, x.text AS ta, y.text AS tb FROM screened p "
        "JOIN cand_text x ON x.gid = p.a JOIN cand_text y ON y.gid = p.b"
    ).to_arrow_reader(VERIFY_BATCH)
    for batch in reader:
        sim = minhash.exact_jaccard(batch.column("ta"), batch.column("tb"), config.shingle_words)
        ok = sim >= t
        a, b = (np_values(batch.column(c)).astype(np.int64)[ok] for c in ("a", "b"))
        similar.append((a, b, sim[ok]))
    con.unregister("screened")
    con.execute("DROP TABLE cand_text")
    a, b, sim = (np.concatenate([x[i] for x in similar]) for i in range(3))
    info["similar_pairs"] = len(a)
    gid, dup_of, similarity = keep_first(a, b, sim)
    if len(gid):
        con.register("near_drops", pa.table({"gid": gid, "dup_of": dup_of, "similarity": similarity}))
        con.execute(
            f"INSERT INTO drops SELECT gid, {sql_string(rule.name)}, 'near', dup_of, round(similarity, 4) FROM near_drops"
        )
        con.unregister("near_drops")
    return info


def keep_first(a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documents to drop from verified similar pairs (a < b, gid order = keep order).

    Documents are decided in gid order: a document is dropped when it is similar to a document
    already kept, and names the first such (its smallest gid) with their similarity. One pass
    over the pairs sorted by (b, a): every pair into a document comes before the document's own
    pairs out, so its fate is settled when it is reached. Returns (gid, dup_of, similarity).
    """
    order = np.lexsort((a, b))
    dropped: dict[int, tuple[int, float]] = {}
    for i in order.tolist():  # one Python step per similar pair: few, next to the corpus
        ai, bi = int(a[i]), int(b[i])
        if bi not in dropped and ai not in dropped:
            dropped[bi] = (ai, float(sim[i]))
    gid = np.fromiter(dropped, np.int64, len(dropped))
    dup = np.fromiter((v[0] for v in dropped.values()), np.int64, len(dropped))
    similarity = np.fromiter((v[1] for v in dropped.values()), np.float64, len(dropped))
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
