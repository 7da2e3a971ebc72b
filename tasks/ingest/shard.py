"""Reading one shard: its items -> staged data and quarantine parts under OUT/.staging/<run_id>/.

A shard drops repeats of a text it already read (seen.py: cheaper than the commit's rewrite); the
commit drops the repeats across shards and runs, and those a full table let through.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lm.fileio import atomic_path
from tasks.common import ROW_GROUP_ROWS, Progress, memory_bytes, utcnow
from tasks.ingest.charsets import LOW_CONFIDENCE
from tasks.ingest.config import IngestConfig, MiB, as_config
from tasks.ingest.layout import EXTRA_COLUMNS, QUARANTINE_SCHEMA, data_schema, parquet_writer, staging_folder
from tasks.ingest.readers import columns_of, read_item
from tasks.ingest.records import Doc, ReadOptions, Skip
from tasks.ingest.seen import SeenTexts, table_slots

log = logging.getLogger("forja.ingest")

DOUBT_EXAMPLES = 5  # low-confidence decodes a shard reports with their text
ROW_GROUP_BYTES = 8 * MiB  # a row group holds at most this much text (or one larger document)
CHECK_DOCS = 16384  # documents checked against the shard's table at once (or CHECK_BYTES of text)
CHECK_BYTES = 8 * MiB


class PartWriter:
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
        self._writer = parquet_writer(tmp, self.schema)

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

    def set_schema(self, schema: pa.Schema) -> None:
        """Later rows have `schema`: the rows so far are written and their part closed first."""
        self._flush()
        if self._writer is not None:
            self._close_part()
        self.schema = schema
        self._new_batch()

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


class _Progress(Progress):
    """Progress lines that also say how many bytes were read: files, MB, MB/s, eta."""

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        line = f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}, {self.nbytes / 1e6:,.1f} MB read"
        line += f", {self.nbytes / 1e6 / elapsed:.1f} MB/s"
        if self.total and self.n:
            line += f", eta {elapsed * (self.total - self.n) / self.n:.0f}s"
        self.log.info(f"{line}, {elapsed:.1f}s")


def ingest_shard(
    shard: dict[str, Any], out: str | os.PathLike, config: IngestConfig | dict[str, Any] | None, run_id: str
) -> dict[str, Any]:
    """Read one shard; write its data and quarantine parts under OUT/.staging/<run_id>/shard-N/.

    Idempotent: a retried shard starts its folder over. Returns {"index", "count", "run_id",
    "sources", "parts", "quarantine", "counts"} (paths relative to OUT, counts before dedup).
    Raises SourceUnavailable (a ConnectionError) on network trouble, for the flow to retry.
    """
    config = as_config(config)
    out = Path(out)
    index = int(shard["index"])
    folder = staging_folder(out, run_id) / f"shard-{index:05d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    opts = _read_options(config, spool_dir=folder)
    now = utcnow()
    items = shard["items"]
    wanted = {c for it in items for c in columns_of(it)}
    extra = [c for c in EXTRA_COLUMNS if c in wanted]  # none: the base schema, as before
    data = PartWriter(folder, "part", data_schema(extra), config.part_bytes)
    quarantine = PartWriter(folder, "quarantine", QUARANTINE_SCHEMA, config.part_bytes)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    memory = memory_bytes(config.memory_limit) // int(shard.get("processes") or 1)  # shards at once
    seen = SeenTexts(table_slots(memory, int(shard.get("bytes") or 0)))
    pending: list[tuple[Doc, str, bytes]] = []  # read, not yet checked against `seen`
    pending_bytes = 0
    doubts: list[dict[str, Any]] = []
    progress = _Progress(f"ingest shard {index + 1}/{shard.get('count', '?')}", len(items), "files", log)

    def stage_pending() -> None:
        nonlocal extra, pending_bytes
        new = seen.first_seen([digest for _, _, digest in pending]).tolist()
        for (ev, source, digest), is_new in zip(pending, new, strict=True):
            if not is_new:  # caught here, it costs the commit no rewrite
                counts["duplicates_in_shard"] += 1
                continue
            counts["staged"] += 1
            counts["legacy_encoding"] += ev.encoding != "utf-8"
            n = len(ev.data)
            row = (digest.hex(), source, ev.path, ev.offset, ev.data, n, ev.encoding, now)
            cols = ev.columns or {}
            if any(c not in extra for c in cols):  # a first detected encoding: its column
                extra = [c for c in EXTRA_COLUMNS if c in extra or c in cols]
                data.set_schema(data_schema(extra))
            if extra:
                row += tuple(cols.get(c) for c in extra)
            conf = cols.get("encoding_confidence")
            if conf is not None and conf < LOW_CONFIDENCE:
                counts["low_confidence_encoding"] += 1
                if len(doubts) < DOUBT_EXAMPLES:
                    doubts.append(_doubt(ev, conf))
            data.add(row, n)
        pending.clear()
        pending_bytes = 0

    try:
        for item in items:
            if item["kind"] != "error" and not item.get("range", [0])[0]:  # a big file's stretch: once
                counts["urls" if item["kind"] == "url" else "files"] += 1
            for ev in read_item(item, opts, on_bytes=lambda n: progress.update(0, n)):
                if isinstance(ev, Skip):  # read and not kept on purpose: counted, not an item
                    counts[f"skipped_{ev.kind}"] += 1
                    continue
                counts["items"] += 1
                if isinstance(ev, Doc):
                    counts["documents"] += 1
                    pending.append((ev, item["source"], hashlib.sha256(ev.data).digest()))
                    pending_bytes += len(ev.data)
                    if len(pending) >= CHECK_DOCS or pending_bytes >= CHECK_BYTES:
                        stage_pending()
                else:
                    counts["quarantined"] += 1
                    reasons[ev.reason] += 1
                    log.debug("quarantine %s @%d: %s (%s)", ev.path, ev.offset, ev.reason, ev.detail)
                    row = (ev.path, ev.offset, ev.reason, ev.detail, item["source"], now)
                    quarantine.add(row, len(ev.detail))
            progress.n += 1  # counted silently: close() reports the end once
        stage_pending()
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
        "encoding_doubts": doubts,
    }


def _doubt(doc: Doc, confidence: float) -> dict[str, Any]:
    """A low-confidence decode, for the report: where, which encoding, and how the text reads."""
    text = bytes(doc.data[:600]).decode("utf-8", "replace")
    log.warning(
        "%s @%d: decoded as %s with low confidence %.2f; set ingest.encoding if it reads wrong: %r",
        doc.path,
        doc.offset,
        doc.encoding,
        confidence,
        text[:80],
    )
    return {
        "path": doc.path,
        "offset": doc.offset,
        "encoding": doc.encoding,
        "confidence": confidence,
        "sample": " ".join(text.split())[:160],
    }


def _read_options(config: IngestConfig, spool_dir: Path) -> ReadOptions:
    """What the readers need of the config; Parquet that must be copied to be read goes to spool_dir."""
    return ReadOptions(
        split=config.split,
        text_field=config.text_field,
        text_column=config.text_column,
        max_doc_bytes=config.max_doc_bytes,
        chunk_bytes=config.read_chunk_bytes,
        spool_dir=str(spool_dir),
        encoding=config.encoding,
    )
