"""CSV (.csv) and TSV (.tsv): one document per record, the cell in column `text_column`.

Read with Python's csv module, which gives exact line numbers and per-record errors. Offsets are
the 1-based line where a record starts (line 1 is the header). Cells are decoded with
surrogateescape, so a non-UTF-8 cell comes back as its original bytes and goes through the same
legacy-encoding detection as text files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from tasks.ingest.decode import TextDecoder
from tasks.ingest.readers.registry import register
from tasks.ingest.readers.stream import Prefixed, streamed
from tasks.ingest.records import Doc, ReadOptions, Reject

MAX_BAD_RECORDS_IN_A_ROW = 1000  # past this many, the rest of the file is skipped (not a CSV)


class CsvReader:
    """The documents of a CSV or TSV stream (the delimiter follows the item's format)."""

    pending_offset = 0  # the csv module reads ahead: a break is reported at the file's start

    def __init__(self, opts: ReadOptions):
        self.opts = opts

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject]:
        path, col = item["path"], self.opts.text_column
        text = io.TextIOWrapper(
            io.BufferedReader(Prefixed(head, stream), 1 << 16),
            encoding="utf-8",
            errors="surrogateescape",
            newline="",
        )
        csv.field_size_limit(min(self.opts.max_doc_bytes * 4, 2**31 - 1))
        reader = csv.reader(text, delimiter="\t" if item["format"] == "tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Reject(path, 1, "bad_csv_row", f"header: {e}")
            return
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if col not in header:
            yield Reject(
                path,
                1,
                "missing_column",
                f"no column {col!r} (columns: {', '.join(header[:20])}); set text_column to the right one",
            )
            return
        yield from self._records(path, reader, header.index(col), TextDecoder(head, self.opts.encoding))

    def _records(self, path: str, reader: Any, idx: int, dec: TextDecoder) -> Iterator[Doc | Reject]:
        """The records after the header; a run of unparseable ones gives up on the file."""
        errors_in_a_row = 0
        while True:
            start_line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                errors_in_a_row += 1
                yield Reject(path, start_line, "bad_csv_row", str(e))
                if errors_in_a_row > MAX_BAD_RECORDS_IN_A_ROW:
                    yield Reject(
                        path,
                        reader.line_num + 1,
                        "bad_csv_row",
                        "too many bad records in a row; rest skipped",
                    )
                    return
                continue
            errors_in_a_row = 0
            if not row:
                continue  # a blank line is not a record
            yield self._cell(path, start_line, row, idx, dec)

    def _cell(self, path: str, line: int, row: list[str], idx: int, dec: TextDecoder) -> Doc | Reject:
        col = self.opts.text_column
        if idx >= len(row):
            return Reject(path, line, "missing_field", f"record has {len(row)} fields, {col!r} is #{idx + 1}")
        value = row[idx]
        if not value.strip():
            return Reject(path, line, "empty", f"{col!r} is empty or whitespace")
        raw = value.encode("utf-8", "surrogateescape")
        if len(raw) > self.opts.max_doc_bytes:
            return Reject(
                path, line, "too_large", f"{len(raw):,} bytes > max_doc_bytes={self.opts.max_doc_bytes:,}"
            )
        return dec.decode(path, line, raw)


register(
    "csv",
    streamed(CsvReader),
    extensions=(".csv",),
    offset_unit="line number (1-based) where the record starts; line 1 is the header",
)
register("tsv", streamed(CsvReader), extensions=(".tsv",))  # offsets as in CSV
