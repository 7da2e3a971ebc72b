"""Ingest: corpora (files, folders, globs, URLs, the built-in `python-docs`) -> a Parquet dataset.

    plan_ingest(sources, config)                  -> shards (lists of items, bounded bytes)
    ingest_shard(shard, out, config, run_id)      -> staged parts of one shard (map this)
    commit_ingest(out, shard_results, config)     -> drops duplicates, publishes, manifest last
    run_ingest(sources, out, config)              -> the three, in sequence

Output folder OUT (one ingest at a time per folder; a lock guards the commit):

    manifest.json                 current snapshot; `outputs` = every data part, `digest` over them
    data/part-SSSSSS-NNNNN.parquet  doc_id, source, path, offset, text, n_bytes, encoding, ingested_at
    quarantine/part-SSSSSS-NNNNN.parquet  path, offset, reason, detail, source, ingested_at
    quarantine/rejected-<run>.parquet  the quarantine of a run that failed max_reject_ratio
    snapshots/SSSSSS.json         a copy of every manifest written (history)

The dataset only grows: a run adds the documents whose doc_id (sha256 of the UTF-8 text) it has
not stored yet, and the quarantine rows whose (source, path, offset, reason) are new. A run that
adds nothing writes nothing, so manifest.json stays byte-identical and a downstream cache keyed on
its digest stays valid. The digest covers the data parts' sha256 (and the config of the run that
wrote them), never a timestamp.

Accounting (stated in the manifest and tested): every input item - a candidate document, or a
file or stretch of a file that could not be split into documents - ends up exactly once as
accepted, a duplicate (a repeat of a text met earlier in the same run), already known (the run's
first occurrence of a text an earlier run stored), or quarantined:
`items == accepted + duplicates + already_known + quarantined`.

Crash safety: shards write under OUT/.staging/<run_id>/; the commit moves parts to final names
that no manifest lists yet and writes the manifest last (atomic rename). A crash anywhere leaves
the previous manifest and every part it lists untouched; the next successful commit removes the
leftovers (staging folders, .tmp-* files, parts no manifest lists).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lm.fileio import atomic_path, atomic_write_json, file_lock, fsync_dir, remove_stale_tmp, sha256_file
from tasks.common import (
    MANIFEST,
    ROW_GROUP_ROWS,
    Progress,
    StageError,
    make_manifest,
    read_manifest,
    utcnow,
    write_manifest,
)
from tasks.sources import (
    OFFSET_UNITS,
    REASONS,
    Doc,
    ReadOptions,
    enumerate_sources,
    read_item,
    redact,
)

log = logging.getLogger("forja.ingest")

MiB = 1 << 20
STAGE = "ingest"
STAGING = ".staging"
LOCK = ".lock"
ROW_GROUP_BYTES = 8 * MiB  # a row group holds at most this much text (or one larger document)
DUCKDB_MEMORY = "512MB"  # the commit's dedup query spills to disk beyond this
SEEN_MAX = 1_000_000  # a shard drops repeats of up to this many texts itself (~100 MB of digests)

DATA_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("offset", pa.int64()),
        ("text", pa.string()),
        ("n_bytes", pa.int64()),
        ("encoding", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("offset", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class IngestConfig(BaseModel):
    """How to read the sources and how to lay out the output."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["file", "blank_line", "percent_line"] = Field(
        "file",
        description="How .txt/.md files become documents: one per file, or cut at blank lines, "
        "or at lines holding only '%' (fortune format).",
    )
    text_field: str = Field("text", min_length=1, description="JSONL: the key holding the text.")
    text_column: str = Field("text", min_length=1, description="CSV/TSV/Parquet: the text column.")
    part_bytes: int = Field(
        64 * MiB, ge=1, description="Start a new data part after about this many bytes of text."
    )
    shard_bytes: int = Field(
        256 * MiB, ge=1, description="A shard groups input files up to about this many bytes."
    )
    shard_files: int = Field(4096, ge=1, description="A shard groups at most this many files.")
    max_doc_bytes: int = Field(
        256 * MiB,
        ge=1,
        le=1 << 30,
        description="Larger documents are quarantined (too_large); peak memory is about 3x this.",
    )
    max_reject_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this share of its items is quarantined (1.0: never).",
    )
    read_chunk_bytes: int = Field(
        MiB, ge=1, le=64 * MiB, description="Files are read in chunks of this many bytes."
    )
    include_hidden: bool = Field(
        False, description="Also read hidden files and folders (names starting with '.') in folders."
    )

    @field_validator("text_field", "text_column")
    @classmethod
    def _not_blank(cls, v: str, info: Any) -> str:
        if not v.strip():
            raise ValueError(f"{info.field_name} must name a field, e.g. 'text'; got {v!r}")
        return v


def _as_config(config: IngestConfig | dict[str, Any] | None) -> IngestConfig:
    if config is None:
        return IngestConfig()
    return config if isinstance(config, IngestConfig) else IngestConfig.model_validate(config)


def new_run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- plan


def plan_ingest(
    sources: list[str],
    config: IngestConfig | dict[str, Any] | None = None,
    exclude: list[str | os.PathLike] | None = None,
) -> list[dict[str, Any]]:
    """Shards of input items, in a deterministic order.

    A shard holds files up to `shard_bytes` / `shard_files`; a URL of unknown size gets a shard of
    its own. Each shard is a small JSON-able dict: {"index", "count", "sources", "bytes", "items",
    "skipped"}. Missing sources raise StageError here, before any work. `exclude` lists folders a
    folder walk skips (run_ingest passes OUT, in case it lies inside a source folder).
    """
    config = _as_config(config)
    items, skipped = enumerate_sources(sources, config.include_hidden, exclude)
    shown = [redact(s) for s in sources]
    shards: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in items:
        n = item["size"] if item["size"] is not None else config.shard_bytes
        if current and (size + n > config.shard_bytes or len(current) >= config.shard_files):
            shards.append({"items": current, "bytes": size})
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        shards.append({"items": current, "bytes": size})
    for i, shard in enumerate(shards):
        shard.update(index=i, count=len(shards), sources=shown)
        shard["skipped"] = skipped if i == 0 else {}
    n_urls = sum(it["kind"] == "url" for it in items)
    log.info(
        "planned %d shard(s): %d item(s) (%d URL(s)), %.1f MB known size; skipped %s",
        len(shards),
        len(items),
        n_urls,
        sum(s["bytes"] for s in shards) / 1e6,
        {k: v for k, v in skipped.items() if v} or "nothing",
    )
    return shards


# --------------------------------------------------------------------------- shard


class _PartWriter:
    """Streams rows into Parquet files of about `part_bytes` each, in bounded row groups.

    Not tasks.common.write_parquet, which wants a whole table in memory: a part holds up to
    part_bytes of text, and one 200 MB document must not be copied into a batch. Row groups hold
    at most ROW_GROUP_ROWS rows or ROW_GROUP_BYTES of text; a document larger than that is a row
    group of its own whose Arrow column wraps the document's buffer without a copy. The text
    columns get neither dictionary encoding nor statistics (min/max would copy a huge value).
    """

    def __init__(self, folder: Path, stem: str, schema: pa.Schema, part_bytes: int):
        self.folder, self.stem, self.schema = folder, stem, schema
        self.part_bytes = part_bytes
        self._new_batch()
        self.part_rows = self.part_written = 0
        self.records: list[dict[str, Any]] = []
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None

    def _new_batch(self) -> None:
        self.cols: dict[str, list[Any]] = {n: [] for n in self.schema.names}
        self._lists = list(self.cols.values())
        self.batch_rows = self.batch_bytes = 0

    def add(self, row: tuple[Any, ...], nbytes: int) -> None:
        if nbytes >= ROW_GROUP_BYTES and self.batch_rows:
            self._flush()
        for column, value in zip(self._lists, row, strict=True):
            column.append(value)
        self.batch_rows += 1
        self.batch_bytes += nbytes
        if self.batch_rows >= ROW_GROUP_ROWS or self.batch_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _column(self, name: str, values: list[Any]) -> pa.Array:
        typ = self.schema.field(name).type
        if name != "text":
            return pa.array(values, type=typ)
        if len(values) == 1:  # wrap the one (possibly huge) document, no copy
            data = values[0]
            offsets = pa.array([0, len(data)], type=pa.int32()).buffers()[1]
            return pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)])
        return pa.array(values, type=pa.binary()).view(pa.string())  # validated UTF-8 already

    def _flush(self) -> None:
        if not self.batch_rows:
            return
        if self._writer is None:
            self._open()
        arrays = [self._column(n, v) for n, v in self.cols.items()]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)  # type: ignore[union-attr]
        del table, arrays
        self.part_rows += self.batch_rows
        self.part_written += self.batch_bytes
        self._new_batch()
        if self.part_written >= self.part_bytes:
            self._close_part()

    def _open(self) -> None:
        self._path = self.folder / f"{self.stem}-{len(self.records):05d}.parquet"
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self._path, fsync=False))
        self._writer = _parquet_writer(tmp, self.schema)

    def _close_part(self) -> None:
        assert self._writer is not None and self._stack is not None and self._path is not None
        self._writer.close()
        self._stack.close()  # renames the temporary file onto its name
        self.records.append(
            {
                "file": str(self._path),
                "rows": self.part_rows,
                "bytes": self._path.stat().st_size,
                "text_bytes": self.part_written,
            }
        )
        self._writer = self._stack = self._path = None
        self.part_rows = self.part_written = 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        if self._writer is not None:
            self._close_part()
        return self.records

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._stack is not None:
            with contextlib.suppress(Exception):
                self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the tmp file
        self._writer = self._stack = None


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """zstd; dictionaries for the repetitive columns; no statistics for the long-text ones
    (min/max would copy a huge value)."""
    repetitive = {"source", "path", "encoding", "reason"}
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        # v2 pages compress the values apart from the levels: one copy less of a huge document
        data_page_version="2.0",
        use_dictionary=[n for n in schema.names if n in repetitive],
        write_statistics=[n for n in schema.names if n not in ("text", "detail")],
    )


class _Progress(Progress):
    """Progress lines that also say how many bytes were read: files, MB, MB/s, eta."""

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        line = f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}, {self.nbytes / 1e6:,.1f} MB read"
        line += f", {self.nbytes / 1e6 / elapsed:.1f} MB/s"
        if self.total and self.n:
            line += f", eta {elapsed * (self.total - self.n) / self.n:.0f}s"
        self.log.info(f"{line}, {elapsed:.1f}s")


def _staging(out: Path, run_id: str) -> Path:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise StageError(f"run_id {run_id!r} must be letters, digits, '_', '.', '-' (e.g. new_run_id())")
    return out / STAGING / run_id


def ingest_shard(
    shard: dict[str, Any], out: str | os.PathLike, config: IngestConfig | dict[str, Any] | None, run_id: str
) -> dict[str, Any]:
    """Read one shard; write its data and quarantine parts under OUT/.staging/<run_id>/shard-N/.

    Idempotent: a retried shard starts its folder over. Returns {"index", "count", "run_id",
    "sources", "parts", "quarantine", "counts"} (paths relative to OUT, counts before dedup).
    Raises SourceUnavailable (a ConnectionError) on network trouble, for the flow to retry.
    """
    config = _as_config(config)
    out = Path(out)
    index = int(shard["index"])
    folder = _staging(out, run_id) / f"shard-{index:05d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    opts = ReadOptions(
        split=config.split,
        text_field=config.text_field,
        text_column=config.text_column,
        max_doc_bytes=config.max_doc_bytes,
        chunk_bytes=config.read_chunk_bytes,
        spool_dir=str(folder),
    )
    now = utcnow()
    data = _PartWriter(folder, "part", DATA_SCHEMA, config.part_bytes)
    quarantine = _PartWriter(folder, "quarantine", QUARANTINE_SCHEMA, config.part_bytes)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seen: set[bytes] = set()
    items = shard["items"]
    progress = _Progress(f"ingest shard {index + 1}/{shard.get('count', '?')}", len(items), "files", log)
    try:
        for item in items:
            counts["urls" if item["kind"] == "url" else "files"] += item["kind"] != "error"
            for ev in read_item(item, opts, on_bytes=lambda n: progress.update(0, n)):
                counts["items"] += 1
                if isinstance(ev, Doc):
                    counts["documents"] += 1
                    digest = hashlib.sha256(ev.data).digest()
                    if digest in seen:  # caught here, it costs the commit no rewrite
                        counts["duplicates_in_shard"] += 1
                        continue
                    if len(seen) < SEEN_MAX:
                        seen.add(digest)
                    counts["staged"] += 1
                    counts["legacy_encoding"] += ev.encoding != "utf-8"
                    n = len(ev.data)
                    row = (digest.hex(), item["source"], ev.path, ev.offset, ev.data, n, ev.encoding, now)
                    data.add(row, n)
                else:
                    counts["quarantined"] += 1
                    reasons[ev.reason] += 1
                    log.debug("quarantine %s @%d: %s (%s)", ev.path, ev.offset, ev.reason, ev.detail)
                    row = (ev.path, ev.offset, ev.reason, ev.detail, item["source"], now)
                    quarantine.add(row, len(ev.detail))
            progress.n += 1  # counted silently: close() reports the end once
        parts, qparts = data.close(), quarantine.close()
    except BaseException:
        data.abort()
        quarantine.abort()
        raise
    progress.close()
    for k, v in (shard.get("skipped") or {}).items():
        counts[f"skipped_{k}"] += v
    rel = [{**p, "file": str(Path(p["file"]).relative_to(out))} for p in parts]
    qrel = [{**p, "file": str(Path(p["file"]).relative_to(out))} for p in qparts]
    return {
        "index": index,
        "count": int(shard.get("count", 1)),
        "run_id": run_id,
        "sources": shard.get("sources", []),
        "parts": rel,
        "quarantine": qrel,
        "counts": {**counts, "quarantine_by_reason": dict(reasons)},
    }


# --------------------------------------------------------------------------- commit


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


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


class _Classified:
    """Which staged rows are new, repeats within the run ('dup'), or first occurrences of what an
    earlier run stored ('known') - the same split the shards make, so the counts mean one thing.

    One DuckDB query over the key columns of the staged parts and the stored parts (DuckDB spills
    to disk, so memory stays bounded however many documents there are). The first occurrence in
    (shard, part, row) order wins, so the result does not depend on which shard finished first.
    """

    def __init__(
        self,
        con: Any,
        table: str,
        staged: list[Path],
        known: list[Path],
        keys: dict[str, str],
        extras: list[str],
    ):
        self.con, self.table, self.staged = con, table, staged
        self.rows: dict[int, int] = {}
        self.new: dict[int, int] = {}
        self.status: dict[str, int] = {"new": 0, "dup": 0, "known": 0}
        if not staged:
            return
        cols = ", ".join(f'"{k}"' for k in keys)
        files = pa.table({"filename": [str(p) for p in staged], "ord": list(range(len(staged)))})
        con.register(f"{table}_files", files)
        if known:
            known_sql = f"SELECT DISTINCT {cols}, TRUE AS hit FROM read_parquet({_sql_list(known)})"
        else:
            nulls = ", ".join(f'NULL::{t} AS "{k}"' for k, t in keys.items())
            known_sql = f"SELECT {nulls}, TRUE AS hit LIMIT 0"
        extra = "".join(f', s."{c}"' for c in extras)
        cols_all = [*keys, *(c for c in extras if c not in keys)]
        part_by = ", ".join(f's."{k}"' for k in keys)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            WITH s AS (
                SELECT f.ord, r.file_row_number AS rn, {", ".join(f'r."{c}"' for c in cols_all)}
                FROM read_parquet({_sql_list(staged)}, filename = true, file_row_number = true) r
                JOIN {table}_files f ON f.filename = r.filename
            ), k AS ({known_sql})
            SELECT s.ord, s.rn{extra},
                CASE WHEN row_number() OVER (PARTITION BY {part_by} ORDER BY s.ord, s.rn) > 1 THEN 'dup'
                     WHEN k.hit THEN 'known'
                     ELSE 'new' END AS status
            FROM s LEFT JOIN k USING ({cols})
            """
        )
        for ord_, rows, new in con.execute(
            f"SELECT ord, count(*), count(*) FILTER (WHERE status = 'new') FROM {table} GROUP BY ord"
        ).fetchall():
            self.rows[ord_], self.new[ord_] = rows, new
        for status, n in con.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall():
            self.status[status] = n

    def kept_rows(self, ord_: int) -> np.ndarray:
        rows = self.con.execute(
            f"SELECT rn FROM {self.table} WHERE ord = ? AND status = 'new' ORDER BY rn", [ord_]
        ).fetchnumpy()["rn"]
        return np.asarray(rows, dtype=np.int64)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql.format(t=self.table)).fetchall() if self.staged else []


def _publish(cls: _Classified, folder: Path, stem: str, out: Path) -> list[dict[str, Any]]:
    """Give the new rows of the staged parts their final names: parts without duplicates are
    renamed as they are; the others are rewritten row group by row group without them."""
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for ord_, staged in enumerate(cls.staged):
        new, rows = cls.new.get(ord_, 0), cls.rows.get(ord_, 0)
        if new == 0:
            continue
        final = folder / f"{stem}-{len(records):05d}.parquet"
        if new == rows:
            os.replace(staged, final)
        else:
            keep = cls.kept_rows(ord_)
            pf = pq.ParquetFile(staged)
            with atomic_path(final, fsync=False) as tmp:
                writer = _parquet_writer(tmp, pf.schema_arrow)
                start = 0
                for rg in range(pf.num_row_groups):
                    table = pf.read_row_group(rg)
                    idx = keep[(keep >= start) & (keep < start + table.num_rows)] - start
                    start += table.num_rows
                    if len(idx):
                        writer.write_table(table.take(pa.array(idx)), row_group_size=ROW_GROUP_ROWS)
                    del table
                writer.close()
            staged.unlink()
        _fsync_file(final)
        records.append(
            {
                "path": str(final.relative_to(out)),
                "sha256": sha256_file(final),
                "content_sha256": content_sha256(final),
                "rows": new,
                "bytes": final.stat().st_size,
            }
        )
    fsync_dir(folder)
    return records


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
        writer = _parquet_writer(tmp, QUARANTINE_SCHEMA)
        for f in files:
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(rg), row_group_size=ROW_GROUP_ROWS)
        writer.close()
    return final


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
    out: str | os.PathLike, shard_results: list[dict[str, Any]], config: IngestConfig | dict[str, Any] | None
) -> dict[str, Any]:
    """Publish the shards of one run as a new snapshot (or nothing, when nothing is new).

    Drops documents already stored and duplicates across shards, moves the parts to their final
    names, writes snapshots/NNNNNN.json and then manifest.json. Returns the manifest plus
    "changed" (False: nothing new, manifest untouched) and "run" (this run's counts).
    Fails with StageError when the run quarantined more than max_reject_ratio of its items; its
    quarantine is then kept in quarantine/rejected-<run_id>.parquet and the manifest is untouched.
    """
    import duckdb

    config = _as_config(config)
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
    staging = _staging(out, run_id)
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
        con = duckdb.connect(
            config={"memory_limit": DUCKDB_MEMORY, "temp_directory": str(tmpdir), "threads": 2}
        )
        try:
            manifest, changed = _commit_locked(con, out, results, config, prev, run)
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
) -> tuple[dict[str, Any], bool]:
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
    )
    quarantine = _Classified(
        con,
        "quarantine_cls",
        [out / p["file"] for r in results for p in r["quarantine"]],
        [out / o["path"] for o in prev_q_outputs],
        {"source": "VARCHAR", "path": "VARCHAR", "offset": "BIGINT", "reason": "VARCHAR"},
        ["reason"],
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
        manifest = prev if prev is not None else _empty_manifest(sources)
        return manifest, False

    snapshot = int((prev or {}).get("snapshot", 0)) + 1
    stem = f"part-{snapshot:06d}"
    new_outputs = _publish(data, out / "data", stem, out)
    new_q = _publish(quarantine, out / "quarantine", stem, out)
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
        config,
        outputs,
        counts,
        upstream=None,
        snapshot=snapshot,
        run_id=results[0]["run_id"],
        sources=sources,
        quarantine={"outputs": prev_q_outputs + new_q, "rows": total["quarantined"]},
        columns=DATA_SCHEMA.names,
        offset_units=OFFSET_UNITS,
        reasons=REASONS,
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


# --------------------------------------------------------------------------- all together


def run_ingest(
    sources: list[str], out: str | os.PathLike, config: IngestConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Plan, read every shard, commit: the whole stage in one process. See commit_ingest."""
    config = _as_config(config)
    out = Path(out)
    run_id = new_run_id()
    t0 = dt.datetime.now(dt.UTC)
    shards = plan_ingest(sources, config, exclude=[out])
    results = [ingest_shard(s, out, config, run_id) for s in shards]
    result = commit_ingest(out, results, config)
    log.info("ingest %s done in %.1fs", run_id, (dt.datetime.now(dt.UTC) - t0).total_seconds())
    return result
