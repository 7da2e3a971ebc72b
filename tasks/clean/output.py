"""The Parquet files of the clean output: the kept rows cut into parts, and dropped.parquet.

    part-00000.parquet ...  doc_id, source, path, offset, text (cleaned), n_bytes (of the cleaned
                            text), lang and lang_score (the language rule's; NULL when it is off), ordered by (doc_id, source, path, offset); zstd, 8192-row groups
    dropped.parquet         every dropped row: doc_id, source, path, offset, rule, reason, dup_of,
                            similarity, n_bytes (the text stays in the ingest output)

Both stream from the shard work files and dedup.parquet in an explicit order, and cut parts and
row groups at fixed sizes: the same input gives byte-identical files, whatever the batch sizes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lm.fileio import atomic_path, atomic_write_json, sha256_file
from tasks.clean.arrays import np_values
from tasks.clean.config import CleanConfig
from tasks.clean.engine import KEY_ORDER, connect
from tasks.clean.report import build_report
from tasks.common import (
    DUCKDB_SHARE,
    ROW_GROUP_ROWS,
    StageError,
    make_manifest,
    memory_bytes,
    output_record,
    sql_list,
    sql_string,
)

log = logging.getLogger("forja.clean")

OUT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("offset", pa.int64()),
        ("text", pa.string()),
        ("n_bytes", pa.int64()),
        ("lang", pa.string()),
        ("lang_score", pa.float64()),
    ]
)
SORT_KEYS = ("doc_id", "source", "path", "offset", "text")  # the output order
DROPPED_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("offset", pa.int64()),
        ("rule", pa.string()),
        ("reason", pa.string()),
        ("dup_of", pa.string()),
        ("similarity", pa.float64()),
        ("n_bytes", pa.int64()),
    ]
)


BUCKET_FILES_MAX = 512  # open bucket files at once in the output phase (well under `ulimit -n`)
SAMPLE_ROWS = 200_000  # doc_ids sampled for the bucket bounds
SPLIT_ROWS_MAX = 1 << 18  # rows per batch of the split into buckets, at most


def bucket_bytes(config: CleanConfig) -> int:
    """Text per sort bucket of the output phase: a sixteenth of the half of memory_limit that
    DuckDB does not get. The bucket being written, the next one and its sorted copy (read ahead on
    a second core) are held at once, beside the row group being written."""
    own = memory_bytes(config.memory_limit) * (1 - DUCKDB_SHARE)
    return max(4 * 2**20, int(own / 16))


def split_rows(config: CleanConfig, text_bytes: int, rows: int) -> int:
    """Rows per batch of the split into buckets: about one bucket's worth of text, at least a row
    group. A batch is written as one slice per bucket, so small batches make many small slices:
    8,192 rows over the 308 buckets of 10 GB at memory 1GB were 27 rows a slice (a split of 23-29
    s); a bucket of text, about 25,000 rows there, takes 20.7 s with the same peak as before, and
    two buckets 15-18 s with 140 MB more."""
    per_row = max(1, text_bytes // max(1, rows))
    return int(min(SPLIT_ROWS_MAX, max(ROW_GROUP_ROWS, bucket_bytes(config) // per_row)))


def _kept_sql(works: list[str], dedup_file: str) -> str:
    src = f"read_parquet({sql_list(works)}, filename = true, file_row_number = true)"
    return (
        f'SELECT w.doc_id, w.source, w.path, w."offset", w.text, w.n_bytes, w.lang, w.lang_score FROM {src} w '
        f"ANTI JOIN read_parquet({sql_string(dedup_file)}) d ON w.filename = d.filename AND w.file_row_number = d.file_row_number "
        "WHERE w._drop IS NULL"
    )


def bucket_bounds(
    con: duckdb.DuckDBPyConnection, works: list[str], n_buckets: int, rows: int | None = None
) -> list[str]:
    """doc_id bounds cutting the kept rows into about `n_buckets` buckets of equal size, from the
    quantiles of a deterministic sample of doc_ids (a hash filter): bucket i holds the doc_ids in
    [bounds[i - 1], bounds[i]). Any bounds give the same output; these only keep buckets even."""
    if n_buckets <= 1 or not works:
        return []
    src = f"read_parquet({sql_list(works)})"
    if rows is None:  # the kept rows (write_parts has counted them already)
        rows = _text_bytes(con, works)[1]
    every = max(1, rows // SAMPLE_ROWS)
    qs = [i / n_buckets for i in range(1, n_buckets)]
    got = con.execute(
        f"SELECT quantile_disc(doc_id, {qs}) FROM {src} WHERE _drop IS NULL AND hash(doc_id) % {every} = 0"
    ).fetchall()[0][0]
    return sorted({b for b in got or [] if b is not None})


def _split(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    bounds: list[str],
    folder: Path,
    batch_rows: int = ROW_GROUP_ROWS,
) -> tuple[list[Path], int, dict[str, int]]:
    """Stream the kept rows (in no order) into one Arrow file per doc_id range; returns the files in
    doc_id order, the bytes of text and the documents per language. Holds one batch of
    `batch_rows` at a time (and its copy, cut by bucket)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bucket-{i:05d}.arrow" for i in range(len(bounds) + 1)]
    edges = np.array(bounds, dtype=object)
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    total = 0
    languages: dict[str, int] = {}
    try:
        for batch in con.sql(sql).to_arrow_reader(batch_rows):
            table = pa.Table.from_batches([batch]).cast(OUT_SCHEMA)
            total += int(pc.sum(table.column("n_bytes")).as_py() or 0)
            for vc in pc.value_counts(pc.drop_null(table.column("lang"))).to_pylist():
                languages[vc["values"]] = languages.get(vc["values"], 0) + vc["counts"]
            ids = table.column("doc_id").to_numpy(zero_copy_only=False)
            idx = np.searchsorted(edges, ids, side="right") if len(edges) else np.zeros(len(ids), np.int64)
            table = table.take(np.argsort(idx, kind="stable"))
            start = 0
            for b, n in enumerate(np.bincount(idx, minlength=len(paths)).tolist()):
                if n:
                    if b not in writers:
                        writers[b] = pa.ipc.new_stream(pa.OSFile(str(paths[b]), "wb"), OUT_SCHEMA)
                    writers[b].write_table(table.slice(start, n))
                    start += n
    finally:
        for w in writers.values():
            w.close()
    return [p for i, p in enumerate(paths) if i in writers], total, languages


def _sorted_bucket(path: Path) -> pa.Table:
    """One bucket, read and sorted as the whole corpus would be (ORDER BY doc_id, source, path,
    offset, text: byte order, nulls last, as DuckDB sorts), its file removed."""
    with pa.OSFile(str(path)) as f:
        table = pa.ipc.open_stream(f).read_all()
    path.unlink()
    return table.sort_by([(c, "ascending") for c in SORT_KEYS])


def _sorted_buckets(paths: list[Path], ahead: bool) -> Iterator[pa.Table]:
    """Each bucket in turn, sorted. `ahead`: the next bucket is read and sorted in a thread while
    the caller writes this one (Arrow's sort and Parquet writer release the GIL: two cores)."""
    if not ahead:
        for path in paths:
            yield _sorted_bucket(path)
        return
    if not paths:
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        coming = pool.submit(_sorted_bucket, paths[0])
        for path in [*paths[1:], None]:
            table = coming.result()
            if path is not None:
                coming = pool.submit(_sorted_bucket, path)
            yield table
            del table


def write_parts(
    con: duckdb.DuckDBPyConnection,
    works: list[str],
    dedup_file: str,
    tmp: Path,
    config: CleanConfig,
    scratch: Path,
    n_buckets: int | None = None,
) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """The kept rows in (doc_id, source, path, offset, text) order, cut into parts; returns their
    records, the bytes of text, and the documents kept per language.

    No sort of the whole corpus: the rows are split by doc_id range into bucket files under
    `scratch` (about bucket_bytes of text each, one pass, in no order), then each bucket is sorted
    in memory and cut in turn (the next one sorted while this one is written). What is held at
    once is a batch of the split (split_rows: about one bucket of text), then two buckets and
    one row group, whatever the corpus size; the parts are the same bytes as one ORDER BY over the
    whole corpus gives.
    `n_buckets` (none: from the text and bucket_bytes) changes how, never what, it writes.
    """
    if not works:
        return [], 0, {}
    text_bytes, rows = _text_bytes(con, works)
    if n_buckets is None:
        n_buckets = min(BUCKET_FILES_MAX, -(-text_bytes // bucket_bytes(config)))
    bounds = bucket_bounds(con, works, n_buckets, rows)
    batch = split_rows(config, text_bytes, rows)
    t = time.perf_counter()
    buckets, total, languages = _split(con, _kept_sql(works, dedup_file), bounds, scratch, batch)
    log.info(
        "output: kept rows split into %d buckets in %.1fs (batches of %d rows)",
        len(buckets),
        time.perf_counter() - t,
        batch,
    )
    with _Parts(tmp, config.part_bytes) as parts:
        for table in _sorted_buckets(buckets, ahead=config.cores() > 1):
            parts.add(table)
            parts.release()
            del table
    return parts.records, total, languages


class _Parts:
    """The part files, written as the sorted rows come: a part ends at the row where its text
    reaches part_bytes (wherever the batches were cut), and each of its row groups of
    ROW_GROUP_ROWS rows is written as soon as it fills: the same bytes as writing the whole part
    with write_parquet, holding one row group instead of one part."""

    def __init__(self, folder: Path, part_bytes: int) -> None:
        self.folder, self.part_bytes = folder, part_bytes
        self.records: list[dict[str, Any]] = []
        self.stack: contextlib.ExitStack | None = None
        self.writer: pq.ParquetWriter | None = None
        self.buf: list[pa.Table] = []
        self.buf_rows = self.rows = self.text_bytes = 0

    def __enter__(self) -> _Parts:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self._close()
        elif self.stack is not None:  # the part being written is removed
            self.writer.close()
            self.stack.__exit__(*exc)

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            cum = np.cumsum(np_values(table.column("n_bytes"))) + self.text_bytes
            j = int(np.searchsorted(cum, self.part_bytes, side="left")) + 1
            if j > table.num_rows:
                self._append(table)
                self.text_bytes = int(cum[-1])
                return
            self._append(table.slice(0, j))
            self._close()
            table = table.slice(j)

    def release(self) -> None:
        """Copy the rows still waiting for their row group, so that they hold no bucket."""
        if self.buf_rows:
            self.buf = [pa.concat_tables(self.buf).take(np.arange(self.buf_rows))]

    def _append(self, table: pa.Table) -> None:
        if self.writer is None:
            self.stack = contextlib.ExitStack()
            path = self.stack.enter_context(
                atomic_path(self.folder / f"part-{len(self.records):05d}.parquet")
            )
            self.writer = pq.ParquetWriter(path, OUT_SCHEMA, compression="zstd", write_statistics=True)
        self.buf.append(table)
        self.buf_rows += table.num_rows
        while self.buf_rows >= ROW_GROUP_ROWS:
            self._write(ROW_GROUP_ROWS)

    def _write(self, n: int) -> None:
        whole = pa.concat_tables(self.buf)
        self.writer.write_table(whole.slice(0, n).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
        self.buf, self.buf_rows, self.rows = [whole.slice(n)], self.buf_rows - n, self.rows + n

    def _close(self) -> None:
        if self.writer is None:
            return
        if self.buf_rows:
            self._write(self.buf_rows)
        self.writer.close()
        self.stack.close()  # renamed into place
        path = self.folder / f"part-{len(self.records):05d}.parquet"
        rec = {
            "path": path.name,
            "sha256": sha256_file(path),
            "rows": self.rows,
            "bytes": path.stat().st_size,
        }
        self.records.append(rec)
        self.stack = self.writer = None
        self.buf, self.buf_rows, self.rows, self.text_bytes = [], 0, 0, 0


def _text_bytes(con: duckdb.DuckDBPyConnection, works: list[str]) -> tuple[int, int]:
    """The bytes of text and the rows the per-document rules kept (before dedup: upper bounds of
    the output)."""
    got = con.execute(
        f"SELECT coalesce(sum(n_bytes), 0), count(*) FROM read_parquet({sql_list(works)}) WHERE _drop IS NULL"
    ).fetchall()[0]
    return int(got[0]), int(got[1])


def write_dropped(
    con: duckdb.DuckDBPyConnection, works: list[str], dedup_file: str, tmp: Path
) -> dict[str, Any]:
    """dropped.parquet: every dropped row's key, rule, reason (and dup_of), streamed in order."""
    path = tmp / "dropped.parquet"
    batches: Any = [DROPPED_SCHEMA.empty_table()]
    if works:
        src = f"read_parquet({sql_list(works)}, filename = true, file_row_number = true)"
        sql = (
            f'SELECT doc_id, source, path, "offset", rule, reason, dup_of, similarity, n_bytes FROM ('
            f'SELECT doc_id, source, path, "offset", _drop AS rule, _reason AS reason, NULL::VARCHAR AS dup_of, '
            f"NULL::DOUBLE AS similarity, n_bytes FROM {src} WHERE _drop IS NOT NULL "
            f'UNION ALL SELECT doc_id, source, path, "offset", rule, reason, dup_of, similarity, n_bytes '
            f"FROM read_parquet({sql_string(dedup_file)})"
            f") ORDER BY {KEY_ORDER}, rule"
        )
        batches = con.sql(sql).to_arrow_reader(ROW_GROUP_ROWS)
    rows = 0
    with atomic_path(path) as tmp_file:
        writer = pq.ParquetWriter(tmp_file, DROPPED_SCHEMA, compression="zstd", write_statistics=True)
        pending: list[pa.Table] = []
        n_pending = 0
        for batch in batches:
            table = (batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])).cast(
                DROPPED_SCHEMA
            )
            pending.append(table)
            n_pending += table.num_rows
            while n_pending >= ROW_GROUP_ROWS:  # row groups of exactly ROW_GROUP_ROWS: batch sizes never show
                whole = pa.concat_tables(pending)
                writer.write_table(
                    whole.slice(0, ROW_GROUP_ROWS).combine_chunks(), row_group_size=ROW_GROUP_ROWS
                )
                pending, n_pending = [whole.slice(ROW_GROUP_ROWS)], n_pending - ROW_GROUP_ROWS
                rows += ROW_GROUP_ROWS
        if n_pending or rows == 0:
            rest = pa.concat_tables([DROPPED_SCHEMA.empty_table(), *pending]).combine_chunks()
            writer.write_table(rest, row_group_size=ROW_GROUP_ROWS)
            rows += n_pending
        writer.close()
    return {**output_record(path, tmp), "rows": rows}


def write_output(
    shard_results: list[dict[str, Any]],
    dedup_result: dict[str, Any],
    folder: Path,
    config: CleanConfig,
    upstream: str | None,
    work_dir: Path,
    ingest_duplicates: int = 0,
) -> dict[str, Any]:
    """Write the clean output into `folder` (the stage's staging folder): the kept rows in
    (doc_id, source, path, offset) order cut into parts of about `part_bytes`, dropped.parquet and
    report.json. Returns the manifest; the stage runner writes it last and publishes the folder."""
    works = [r["work"] for r in shard_results]
    scratch = Path(tempfile.mkdtemp(prefix="buckets-", dir=work_dir))
    try:  # the kept rows need no order from DuckDB (write_parts sorts them bucket by bucket)
        with connect(config, work_dir, ordered=False) as con:
            parts, bytes_out, languages = write_parts(
                con, works, dedup_result["output"], folder, config, scratch
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with connect(config, work_dir) as con:
        dropped = write_dropped(con, works, dedup_result["output"], folder)
    report = build_report(
        shard_results,
        dedup_result,
        config,
        bytes_out,
        ingest_duplicates,
        languages=languages if config.is_on("language") else None,
    )
    atomic_write_json(folder / "report.json", report)
    artifacts = [output_record(folder / "report.json", folder), dropped]
    counts = {
        "rows_in": report["rows_in"],
        "rows_out": report["rows_out"],
        "bytes_in": report["bytes_in"],
        "bytes_out": report["bytes_out"],
        "dropped": {r["rule"]: r["dropped"] for r in report["rules"] if r["kind"] != "map"},
        "changed": {r["rule"]: r["changed"] for r in report["rules"] if r["kind"] == "map"},
        "duplicates": report["duplicates"],
        **{k: report[k] for k in ("languages",) if k in report},
        **{
            count: r.get(key, 0)
            for r in report["rules"]
            if r["rule"] == "decontaminate"
            for key, count in (("overlap", "eval_overlap"), ("eval_sources", "eval_sources"))
        },
    }
    if sum(p["rows"] for p in parts) != report["rows_out"]:  # pragma: no cover - internal invariant
        raise StageError(
            f"internal error: wrote {sum(p['rows'] for p in parts)} rows, expected {report['rows_out']}"
        )
    return make_manifest(
        "clean", config.identity(), parts, counts, upstream=upstream, artifacts=artifacts, report=report
    )
