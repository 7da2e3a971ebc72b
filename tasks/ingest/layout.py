"""The layout of an ingest output folder OUT: names, Parquet schemas and writer settings, run ids.

manifest.json                 current snapshot; `outputs` = every data part, `digest` over them
data/part-SSSSSS-NNNNN.parquet  doc_id, source, path, offset, text, n_bytes, encoding, ingested_at
                              (+ title, url, date, record_id, content_type: HTML and web archives;
                              encoding_confidence: parts holding a detected legacy encoding)
quarantine/part-SSSSSS-NNNNN.parquet  path, offset, reason, detail, source, ingested_at
quarantine/rejected-<run>.parquet  the quarantine of a run that failed max_reject_ratio
snapshots/SSSSSS.json         a copy of every manifest written (history)
.staging/<run_id>/shard-NNNNN/  what a shard wrote, until the commit publishes it
.lock                         held by the commit
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common import StageError, utcnow

STAGE = "ingest"
STAGING = ".staging"
LOCK = ".lock"

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
# Columns only some documents have, in this order after the base ones: a format's own
# (registry.register(columns=...)), present in the parts of a shard that read such a format, and
# `encoding_confidence`, present in a part from its first document whose encoding was detected.
EXTRA_COLUMNS: dict[str, pa.DataType] = {
    "title": pa.string(),  # an HTML page's <title>
    "url": pa.string(),  # a web-archive record's target URI
    "date": pa.timestamp("us", tz="UTC"),  # its WARC-Date (ARC: the archive date)
    "record_id": pa.string(),  # its WARC-Record-ID (ARC: none)
    "content_type": pa.string(),  # its payload's media type
    "encoding_confidence": pa.float64(),  # a detected (not declared) encoding: its plausibility
}


def data_schema(extra: set[str] | tuple[str, ...] = ()) -> pa.Schema:
    """DATA_SCHEMA plus the named EXTRA_COLUMNS (in their fixed order)."""
    unknown = set(extra) - set(EXTRA_COLUMNS)
    if unknown:
        raise ValueError(f"unknown data column(s) {sorted(unknown)}; add them to layout.EXTRA_COLUMNS")
    return pa.schema([*DATA_SCHEMA, *(pa.field(n, t) for n, t in EXTRA_COLUMNS.items() if n in extra)])


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


def new_run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def staging_folder(out: Path, run_id: str) -> Path:
    """OUT/.staging/<run_id>: where the shards of one run write; `run_id` is checked (it is a path)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise StageError(f"run_id {run_id!r} must be letters, digits, '_', '.', '-' (e.g. new_run_id())")
    return out / STAGING / run_id


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """zstd; dictionaries for the repetitive columns; no statistics for the long-text ones
    (min/max would copy a huge value)."""
    repetitive = {"source", "path", "encoding", "reason", "content_type"}
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        # v2 pages compress the values apart from the levels: one copy less of a huge document
        data_page_version="2.0",
        use_dictionary=[n for n in schema.names if n in repetitive],
        write_statistics=[n for n in schema.names if n not in ("text", "detail")],
    )
