"""Parquet (.parquet, .pq): one document per row, the value in column `text_column`.

The column may be a string (stored as is) or binary (decoded like a text file, legacy encodings
included). Offsets are 1-based row numbers. Parquet needs random access: a local plain file is
read in place, anything else (a URL, a compressed file) is first copied to `spool_dir` in chunks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tasks.ingest.decode import TextDecoder, text_value
from tasks.ingest.readers.registry import register
from tasks.ingest.readers.stream import streamed
from tasks.ingest.records import Doc, ReadOptions, Reject

BATCH_ROWS = 1024  # rows decoded at a time: bounds memory whatever the row groups hold


class ParquetReader:
    """The documents of a Parquet file, row by row."""

    pending_offset = 0  # a break while spooling loses the whole file

    def __init__(self, opts: ReadOptions):
        self.opts = opts

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject]:
        spooled = None
        try:
            if item["kind"] == "file" and not item.get("compression"):
                source: Any = item["path"]
            else:
                spool = Path(self.opts.spool_dir or ".")
                spool.mkdir(parents=True, exist_ok=True)
                spooled = spool / f".spool-{os.getpid()}-{id(item)}.parquet"
                with open(spooled, "wb") as f:
                    f.write(head)
                    shutil.copyfileobj(stream, f, 1 << 20)
                source = spooled
            yield from self._documents(item["path"], source)
        finally:
            if spooled is not None:
                spooled.unlink(missing_ok=True)

    def _documents(self, path: str, source: Any) -> Iterator[Doc | Reject]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = self.opts.text_column
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as e:
            yield Reject(path, 0, "corrupt", f"not a readable Parquet file: {e}")
            return
        names = pf.schema_arrow.names
        if col not in names:
            yield Reject(
                path,
                0,
                "missing_column",
                f"no column {col!r} (columns: {', '.join(names[:20])}); set text_column",
            )
            return
        typ = pf.schema_arrow.field(col).type
        is_text = pa.types.is_string(typ) or pa.types.is_large_string(typ)
        is_binary = pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
        if not (is_text or is_binary) and pf.metadata.num_rows:
            yield Reject(
                path,
                1,
                "not_string",
                f"column {col!r} has type {typ}, not string ({pf.metadata.num_rows:,} rows not read)",
            )
            return
        dec = TextDecoder(b"", self.opts.encoding)
        row = 0
        try:
            for batch in pf.iter_batches(columns=[col], batch_size=BATCH_ROWS):
                for value in batch.column(0).to_pylist():
                    row += 1
                    yield self._value(path, row, value, is_binary, dec)
        except (pa.ArrowException, OSError) as e:
            yield Reject(path, row + 1, "corrupt", f"Parquet data cannot be read from row {row + 1}: {e}")

    def _value(self, path: str, row: int, value: Any, is_binary: bool, dec: TextDecoder) -> Doc | Reject:
        col, limit = self.opts.text_column, self.opts.max_doc_bytes
        if value is None:
            return Reject(path, row, "missing_field", f"{col!r} is null")
        if is_binary:
            if len(value) > limit:
                return Reject(path, row, "too_large", f"{len(value):,} bytes > max_doc_bytes")
            return dec.decode(path, row, value)
        if len(value) > limit:
            return Reject(path, row, "too_large", f"{len(value):,} characters > max_doc_bytes")
        return text_value(path, row, value, col)


register(
    "parquet",
    streamed(ParquetReader, sniff_text=False),
    extensions=(".parquet", ".pq"),
    offset_unit="row number (1-based)",
)
