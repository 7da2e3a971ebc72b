"""Committing an ingest run: the shards' staged parts -> a new snapshot of OUT (or nothing new).

DuckDB queries (`_Classified`, one per hash bucket of keys, so memory does not grow with the corpus)
sort the staged rows into new ones, repeats within the run and ones an earlier run stored;
`_publish` gives the new rows their final part names (rewriting parts in threads, bounded by memory);
the manifest is written last. The commit holds OUT's lock, and first removes what interrupted
runs left behind (`_cleanup`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lm.fileio import atomic_path, atomic_write_json, file_lock, fsync_dir, remove_stale_tmp, sha256_file
from tasks.common import (
    DUCKDB_SHARE,
    MANIFEST,
    ROW_GROUP_ROWS,
    StageError,
    configure_duckdb,
    in_threads,
    make_manifest,
    memory_bytes,
    read_manifest,
    sql_list,
    sql_string,
    write_manifest,
)
from tasks.ingest.config import IngestConfig, as_config, identity_dict
from tasks.ingest.layout import (
    DATA_SCHEMA,
    EXTRA_COLUMNS,
    LOCK,
    QUARANTINE_SCHEMA,
    STAGE,
    STAGING,
    parquet_writer,
    staging_folder,
)
from tasks.ingest.readers import offset_units
from tasks.ingest.records import REASONS

log = logging.getLogger("forja.ingest")


def _previous(out: Path) -> dict[str, Any] | None:
    if not (out / MANIFEST).is_file():
        return None
    return read_manifest(out, STAGE)


def _cleanup(out: Path, prev: dict[str, Any] | None, keep_run: str | None) -> None:
    """Remove what interrupted runs left: staging folders, .tmp-* files, unlisted parts."""
    staging = out / STAGING
    if staging.is_dir():
        for d in staging.iterdir():
            if d.name != keep_run:
                log.info("removing leftover staging folder %s", d)
                shutil.rmtree(d, ignore_errors=True)
    for sub in (out, out / "data", out / "quarantine", out / "snapshots"):
        for p in remove_stale_tmp(sub):
            log.info("removed leftover temporary file %s", p)
    listed = {o["path"] for o in (prev or {}).get("outputs", [])}
    listed |= {o["path"] for o in (prev or {}).get("quarantine", {}).get("outputs", [])}
    for sub in ("data", "quarantine"):
        folder = out / sub
        if folder.is_dir():
            for p in folder.glob("part-*.parquet"):
                if f"{sub}/{p.name}" not in listed:
                    log.warning("removing %s: no manifest lists it (left by an interrupted commit)", p)
                    p.unlink()
    snap = (prev or {}).get("snapshot", 0)
    if (out / "snapshots").is_dir():
        for p in (out / "snapshots").glob("*.json"):
            if p.stem.isdigit() and int(p.stem) > snap:
                p.unlink()


BUCKET_BYTES = 500  # what one row costs a bucket's query in DuckDB, with room (key, window sort, join)
MAX_BUCKET_ROWS = 500_000  # at most this many rows per query: the commit's peak stays put as OUT grows


def bucket_rows(memory_limit: str) -> int:
    """Rows classified per DuckDB query: as many as DuckDB's share of `memory_limit` holds, at most
    MAX_BUCKET_ROWS (1GB and more: 500,000 rows, about 600 MB of typical text). A 100 GB corpus is
    classified in ~200 queries of this size, not in one that grows until it fills DuckDB's share and
    spills; each query scans the staged keys again (~1.5 s per 8 M rows here)."""
    share = int(memory_bytes(memory_limit) * DUCKDB_SHARE)
    return max(10_000, min(MAX_BUCKET_ROWS, share // BUCKET_BYTES))


class _Classified:
    """Which staged rows are new, repeats within the run ('dup'), or first occurrences of what an
    earlier run stored ('known') - the same split the shards make, so the counts mean one thing.

    The staged and stored rows are split by a hash of their key into buckets of at most
    `bucket_rows` rows (a key's copies all fall in one bucket); one DuckDB query per bucket writes
    its rows' status to a Parquet file under `work`, sorted by (part, row). So the commit's memory
    depends on the bucket size, not on the corpus: a 10 GB ingest peaks where a 1 GB one does. The
    first occurrence in (shard, part, row) order wins, so the result depends neither on which shard
    finished first nor on the number of buckets.
    """

    def __init__(
        self,
        con: Any,
        table: str,
        staged: list[Path],
        known: list[Path],
        keys: dict[str, str],
        extras: list[str],
        work: Path,
        max_rows: int,
    ):
        self.con, self.staged = con, staged
        self.rows: dict[int, int] = {}
        self.new: dict[int, int] = {}
        self.status: dict[str, int] = {"new": 0, "dup": 0, "known": 0}
        if not staged:
            return
        n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in [*staged, *known])
        buckets = max(1, -(-n_rows // max_rows))
        cols = ", ".join(f'"{k}"' for k in keys)

        def in_bucket(b: int, prefix: str = "") -> str:
            key_cols = ", ".join(f'{prefix}"{k}"' for k in keys)
            return f"hash({key_cols}) % {buckets} = {b}" if buckets > 1 else "TRUE"

        files = pa.table({"filename": [str(p) for p in staged], "ord": list(range(len(staged)))})
        con.register(f"{table}_files", files)

        def known_sql(b: int) -> str:
            if known:
                return f"SELECT DISTINCT {cols}, TRUE AS hit FROM read_parquet({sql_list(known)}) WHERE {in_bucket(b)}"
            nulls = ", ".join(f'NULL::{t} AS "{k}"' for k, t in keys.items())
            return f"SELECT {nulls}, TRUE AS hit LIMIT 0"

        extra = "".join(f', s."{c}"' for c in extras)
        cols_all = [*keys, *(c for c in extras if c not in keys)]
        part_by = ", ".join(f's."{k}"' for k in keys)
        work.mkdir(parents=True, exist_ok=True)
        bucket_files = [work / f"{table}-{b:05d}.parquet" for b in range(buckets)]
        for b, path in enumerate(bucket_files):
            con.execute(
                f"""
                COPY (
                    WITH s AS (
                        SELECT f.ord, r.file_row_number AS rn, {", ".join(f'r."{c}"' for c in cols_all)}
                        FROM read_parquet({sql_list(staged)}, filename = true, file_row_number = true) r
                        JOIN {table}_files f ON f.filename = r.filename
                        WHERE {in_bucket(b, "r.")}
                    ), k AS ({known_sql(b)})
                    SELECT s.ord, s.rn{extra},
                        CASE WHEN row_number() OVER (PARTITION BY {part_by} ORDER BY s.ord, s.rn) > 1 THEN 'dup'
                             WHEN k.hit THEN 'known'
                             ELSE 'new' END AS status
                    FROM s LEFT JOIN k USING ({cols})
                    ORDER BY s.ord, s.rn
                ) TO {sql_string(path)} (FORMAT parquet)
                """
            )
        self.source = f"read_parquet({sql_list(bucket_files)})"
        for ord_, rows, new in con.execute(
            f"SELECT ord, count(*), count(*) FILTER (WHERE status = 'new') FROM {self.source} GROUP BY ord"
        ).fetchall():
            self.rows[ord_], self.new[ord_] = rows, new
        for status, n in con.execute(
            f"SELECT status, count(*) FROM {self.source} GROUP BY status"
        ).fetchall():
            self.status[status] = n
        if buckets > 1:
            log.info("classified %s rows of %s in %d buckets", f"{n_rows:,}", table, buckets)

    def kept_rows(self, ord_: int) -> np.ndarray:
        rows = self.con.execute(
            f"SELECT rn FROM {self.source} WHERE ord = ? AND status = 'new' ORDER BY rn", [ord_]
        ).fetchnumpy()["rn"]
        return np.asarray(rows, dtype=np.int64)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql.format(t=self.source)).fetchall() if self.staged else []


FLUSH_BYTES = 16 * 2**20  # DuckDB's cache of freed memory in the commit (default 128 MiB)
REWRITE_BYTES = 128 * 2**20  # what rewriting one part holds at once (a row group read, taken, encoded)


def rewrite_threads(memory_limit: str) -> int:
    """Parts rewritten at once: one per core, as many as three quarters of the memory DuckDB does
    not get holds (1GB: 2, 2GB: 5), at least one."""
    budget = memory_bytes(memory_limit) * (1 - DUCKDB_SHARE) * 0.75
    return max(1, min(len(os.sched_getaffinity(0)), int(budget // REWRITE_BYTES)))


def _publish(cls: _Classified, folder: Path, stem: str, out: Path, threads: int) -> list[dict[str, Any]]:
    """Give the new rows of the staged parts their final names: parts without duplicates are
    renamed as they are; the others are rewritten row group by row group without them. The
    rewrites (zstd, in pyarrow, which releases the GIL) run in `threads` threads; they are most of a
    commit where repeats cross shards or outgrow a shard's table of the texts it read (seen.py)."""
    folder.mkdir(parents=True, exist_ok=True)

    def parts() -> Iterator[tuple[Path, Path, int, np.ndarray | None]]:  # DuckDB: this thread only
        n = 0
        for ord_, staged in enumerate(cls.staged):
            new, rows = cls.new.get(ord_, 0), cls.rows.get(ord_, 0)
            if new:
                yield (
                    staged,
                    folder / f"{stem}-{n:05d}.parquet",
                    new,
                    None if new == rows else cls.kept_rows(ord_),
                )
                n += 1

    def place(part: tuple[Path, Path, int, np.ndarray | None]) -> dict[str, Any]:
        staged, final, new, keep = part
        if keep is None:
            os.replace(staged, final)
        else:
            _rewrite(staged, final, keep)
        _fsync_file(final)
        return {
            "path": str(final.relative_to(out)),
            "sha256": sha256_file(final),
            "content_sha256": content_sha256(final),
            "rows": new,
            "bytes": final.stat().st_size,
        }

    records = list(in_threads(place, parts(), threads))
    fsync_dir(folder)
    return records


def _rewrite(staged: Path, final: Path, keep: np.ndarray) -> None:
    """`staged` without the rows not in `keep` (sorted row numbers), as `final`, row group by row
    group. With `take` (a copy of the kept rows) one part's rewrite added 125-138 MB of RssAnon for
    a pool peak of 30 MB, mimalloc keeping what was freed; with zero-copy slices and the pool's free
    pages given back after each row group, 37-42 MB (9 MB row groups; `bench/rewrite_memory.py`,
    bench/README.md "Rewrites from slices")."""
    pool = pa.default_memory_pool()
    pf = pq.ParquetFile(staged)
    with atomic_path(final, fsync=False) as tmp:
        writer = parquet_writer(tmp, pf.schema_arrow)
        start = 0
        for rg in range(pf.num_row_groups):
            table = pf.read_row_group(rg)
            idx = keep[(keep >= start) & (keep < start + table.num_rows)] - start
            start += table.num_rows
            if len(idx):
                writer.write_table(_rows(table, idx), row_group_size=ROW_GROUP_ROWS)
            del table
            pool.release_unused()
        writer.close()
    staged.unlink()


def _rows(table: pa.Table, idx: np.ndarray) -> pa.Table:
    """The rows `idx` (sorted, distinct) of `table` as zero-copy slices, one per run of consecutive
    rows (a part loses a few repeats: a handful of runs), not a copy as `take` makes."""
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    starts, ends = idx[np.r_[0, cuts]], idx[np.r_[cuts - 1, len(idx) - 1]] + 1
    return pa.concat_tables(
        [table.slice(a, b - a) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    )


def content_sha256(path: Path) -> str:
    """sha256 of a part's rows without `ingested_at`: the same documents from the same places give
    the same digest whenever (and on whichever task runner) they were ingested."""
    pf = pq.ParquetFile(path)
    columns = [c for c in pf.schema_arrow.names if c not in ("ingested_at", "text")]  # doc_id stands for text
    h = hashlib.sha256()
    for rg in range(pf.num_row_groups):
        table = pf.read_row_group(rg, columns=columns)
        rows = pc.binary_join_element_wise(*[pc.cast(table[c], pa.string()) for c in columns], "\x1f")
        h.update("\x1e".join(pc.fill_null(rows, "").to_pylist()).encode())
        h.update(b"\x1d")
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_rejected(out: Path, results: list[dict[str, Any]], run_id: str) -> Path | None:
    """All of a failed run's quarantine rows in one file, for inspection."""
    files = [out / q["file"] for r in results for q in r["quarantine"]]
    if not files:
        return None
    final = out / "quarantine" / f"rejected-{run_id}.parquet"
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        writer = parquet_writer(tmp, QUARANTINE_SCHEMA)
        for f in files:
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(rg), row_group_size=ROW_GROUP_ROWS)
        writer.close()
    return final


def _doubts(results: list[dict[str, Any]], n: int = 10) -> list[dict[str, Any]]:
    """The run's first `n` low-confidence decodes (the shards' examples), for the report."""
    return [d for r in sorted(results, key=lambda r: r["index"]) for d in r.get("encoding_doubts", [])][:n]


def _sum_counts(results: list[dict[str, Any]]) -> dict[str, Any]:
    total: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in results:
        for k, v in r["counts"].items():
            if k == "quarantine_by_reason":
                reasons.update(v)
            else:
                total[k] += v
    keys = ["items", "documents", "staged", "duplicates_in_shard", "quarantined", "files", "urls"]
    return {
        **{k: total.get(k, 0) for k in keys},
        **total,
        "quarantine_by_reason": dict(sorted(reasons.items())),
    }


def commit_ingest(
    out: str | os.PathLike,
    shard_results: list[dict[str, Any]],
    config: IngestConfig | dict[str, Any] | None,
    key: str | None = None,
) -> dict[str, Any]:
    """Publish the shards of one run as a new snapshot (or nothing, when nothing is new).

    Drops documents already stored and duplicates across shards, moves the parts to their final
    names, writes snapshots/NNNNNN.json and then manifest.json. Returns the manifest plus
    "changed" (False: nothing new, manifest untouched) and "run" (this run's counts).
    Fails with StageError when the run quarantined more than max_reject_ratio of its items; its
    quarantine is then kept in quarantine/rejected-<run_id>.parquet and the manifest is untouched.
    `key`, the stage's cache key (tasks/ingest/stage.py), is recorded in the manifest; a run that
    found nothing new only updates that field, so the same sources are not read again.
    """
    import duckdb

    config = as_config(config)
    out = Path(out)
    if not shard_results:
        raise StageError("commit_ingest got no shard results; run ingest_shard on every planned shard")
    results = sorted(shard_results, key=lambda r: r["index"])
    run_id = results[0]["run_id"]
    count = results[0]["count"]
    got = [r["index"] for r in results]
    if got != list(range(count)) or any(r["run_id"] != run_id for r in results):
        missing = sorted(set(range(count)) - set(got))
        raise StageError(
            f"commit_ingest needs one result per planned shard of one run: expected {count} shard(s) of "
            f"run {run_id}, missing {missing}, got indices {got}; re-run the missing shards"
        )
    staging = staging_folder(out, run_id)
    for r in results:
        for p in [*r["parts"], *r["quarantine"]]:
            if not (out / p["file"]).is_file():
                raise StageError(
                    f"staged part {out / p['file']} of shard {r['index']} is missing: shards and the commit "
                    "must share OUT's filesystem, and one ingest may run per OUT at a time; re-run the ingest"
                )
    run = _sum_counts(results)
    with file_lock(out / LOCK):
        prev = _previous(out)
        _cleanup(out, prev, keep_run=run_id)
        ratio = run["quarantined"] / run["items"] if run["items"] else 0.0
        if ratio > config.max_reject_ratio:
            rejected = _write_rejected(out, results, run_id)
            shutil.rmtree(staging, ignore_errors=True)
            top = ", ".join(f"{k}: {v}" for k, v in Counter(run["quarantine_by_reason"]).most_common(5))
            raise StageError(
                f"{run['quarantined']:,} of {run['items']:,} input items ({ratio:.1%}) were quarantined, "
                f"above max_reject_ratio={config.max_reject_ratio} ({top}); see {rejected}. "
                "Fix the inputs or raise max_reject_ratio. The dataset was not changed."
            )
        tmpdir = staging / "duckdb"
        tmpdir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect()
        # the dedup query is bound by DuckDB's sort and join (it spills to disk beyond its share)
        configure_duckdb(con, config.memory_limit, tmpdir)
        # what a query freed goes back to the system when it ends (by default DuckDB keeps up to
        # 128 MiB cached): the rewrite threads that follow the classification get that memory
        con.execute(f"SET allocator_flush_threshold = '{FLUSH_BYTES}B'")
        try:
            manifest, changed = _commit_locked(con, out, results, config, prev, run, key)
        finally:
            con.close()
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out / STAGING).rmdir()
    return {**manifest, "changed": changed, "run": run}


def _commit_locked(
    con: Any,
    out: Path,
    results: list[dict[str, Any]],
    config: IngestConfig,
    prev: dict[str, Any] | None,
    run: dict[str, Any],
    key: str | None,
) -> tuple[dict[str, Any], bool]:
    work = staging_folder(out, results[0]["run_id"]) / "classified"
    max_rows = bucket_rows(config.memory_limit)
    prev_outputs = list((prev or {}).get("outputs", []))
    prev_q = dict((prev or {}).get("quarantine", {}))
    prev_q_outputs = list(prev_q.get("outputs", []))
    data = _Classified(
        con,
        "data_cls",
        [out / p["file"] for r in results for p in r["parts"]],
        [out / o["path"] for o in prev_outputs],
        {"doc_id": "VARCHAR"},
        ["n_bytes", "encoding"],
        work,
        max_rows,
    )
    quarantine = _Classified(
        con,
        "quarantine_cls",
        [out / p["file"] for r in results for p in r["quarantine"]],
        [out / o["path"] for o in prev_q_outputs],
        {"source": "VARCHAR", "path": "VARCHAR", "offset": "BIGINT", "reason": "VARCHAR"},
        ["reason"],
        work,
        max_rows,
    )
    if sum(data.status.values()) != run["staged"]:
        raise StageError(
            f"internal: staged parts hold {sum(data.status.values())} rows, shards reported "
            f"{run['staged']}; re-run the ingest"
        )
    new_bytes, new_legacy = (
        data.query(
            "SELECT sum(n_bytes), count(*) FILTER (WHERE encoding <> 'utf-8') FROM {t} WHERE status = 'new'"
        )
        or [(0, 0)]
    )[0]
    new_reasons = dict(
        quarantine.query(
            "SELECT reason, count(*) FROM {t} WHERE status = 'new' GROUP BY reason ORDER BY reason"
        )
    )
    run.update(
        accepted=data.status["new"],
        duplicates=data.status["dup"] + run["duplicates_in_shard"],
        already_known=data.status["known"],
        quarantined_new=quarantine.status["new"],
        text_bytes=int(new_bytes or 0),
        legacy_encoding=int(new_legacy or 0),
    )
    if run["items"] != run["accepted"] + run["duplicates"] + run["already_known"] + run["quarantined"]:
        raise StageError(f"internal: the counts of run {results[0]['run_id']} do not add up: {run}")
    sources = results[0].get("sources", [])
    if run["accepted"] == 0 and run["quarantined_new"] == 0:
        log.info(
            "nothing new: %d item(s) read, %d already stored, %d duplicate(s), %d quarantined as before; "
            "manifest unchanged",
            run["items"],
            run["already_known"],
            run["duplicates"],
            run["quarantined"],
        )
        if prev is None:
            return _empty_manifest(sources), False
        if key is not None and prev.get("key") != key:  # same content, new sources' fingerprint
            prev = write_manifest(out, {**prev, "key": key})
        return prev, False

    snapshot = int((prev or {}).get("snapshot", 0)) + 1
    stem = f"part-{snapshot:06d}"
    threads = rewrite_threads(config.memory_limit)
    new_outputs = _publish(data, out / "data", stem, out, threads)
    new_q = _publish(quarantine, out / "quarantine", stem, out, threads)
    ptotal = (prev or {}).get("counts", {}).get("total", {})
    q_reasons = Counter(ptotal.get("quarantine_by_reason", {}))
    q_reasons.update(new_reasons)
    outputs = prev_outputs + new_outputs
    total = {
        "documents": ptotal.get("documents", 0) + run["accepted"],
        "text_bytes": ptotal.get("text_bytes", 0) + run["text_bytes"],
        "legacy_encoding": ptotal.get("legacy_encoding", 0) + run["legacy_encoding"],
        "quarantined": ptotal.get("quarantined", 0) + run["quarantined_new"],
        "quarantine_by_reason": dict(sorted(q_reasons.items())),
        "parts": len(outputs),
        "snapshots": snapshot,
    }
    counts = {
        "in": run["items"],
        "out": run["accepted"],
        "run": run,
        "total": total,
        "invariant": "run.items == run.accepted + run.duplicates + run.already_known + run.quarantined",
    }
    manifest = make_manifest(
        STAGE,
        identity_dict(config),  # `encoding` unset left out: the digests of older configs hold
        outputs,
        counts,
        upstream=None,
        snapshot=snapshot,
        run_id=results[0]["run_id"],
        sources=sources,
        quarantine={"outputs": prev_q_outputs + new_q, "rows": total["quarantined"]},
        columns=DATA_SCHEMA.names,
        extra_columns={n: str(t) for n, t in EXTRA_COLUMNS.items()},
        offset_units=offset_units(),
        reasons=REASONS,
        **({"key": key} if key is not None else {}),
        **({"encoding_doubts": doubts} if (doubts := _doubts(results)) else {}),
    )
    atomic_write_json(out / "snapshots" / f"{snapshot:06d}.json", manifest)
    write_manifest(out, manifest)  # last: the snapshot exists once this rename happens
    log.info(
        "snapshot %d: +%d document(s) (%.1f MB), %d duplicate(s), %d already stored, %d quarantined "
        "(%d new); total %d document(s) in %d part(s)",
        snapshot,
        run["accepted"],
        run["text_bytes"] / 1e6,
        run["duplicates"],
        run["already_known"],
        run["quarantined"],
        run["quarantined_new"],
        total["documents"],
        total["parts"],
    )
    return manifest, True


def _empty_manifest(sources: list[str]) -> dict[str, Any]:
    """What a run that stored nothing returns when no snapshot exists yet (nothing is written)."""
    return {"stage": STAGE, "snapshot": 0, "outputs": [], "sources": sources, "digest": None}
