"""JSON Lines (.jsonl, .ndjson): one document per line, the string under `text_field`.

Offsets are 1-based line numbers. Blank lines are skipped; a line that is not JSON, not an
object, or lacks the field (or holds a null) is rejected with its line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from tasks.ingest.decode import NON_SPACE, UTF8_BOM, text_value
from tasks.ingest.readers.registry import register
from tasks.ingest.readers.stream import chunks, streamed
from tasks.ingest.records import Doc, ReadOptions, Reject


class LineSplitter:
    """Cuts a byte stream into lines (for JSONL), holding at most one line of max_doc_bytes.

    Yields (line_number, data | None, size); data is None for a line over the limit.
    """

    def __init__(self, max_doc_bytes: int):
        self.max = max_doc_bytes
        self.lineno = 1
        self.line = bytearray()
        self.size = 0

    @property
    def pending_offset(self) -> int:
        return self.lineno

    def _emit(self) -> tuple[int, bytes | None, int]:
        out = (self.lineno, None if self.size > self.max else bytes(self.line), self.size)
        self.line = bytearray()
        self.size = 0
        self.lineno += 1
        return out

    def _append(self, chunk: bytes, a: int, b: int) -> None:
        self.size += b - a
        if self.size <= self.max:
            self.line += chunk[a:b]
        elif self.line:
            self.line = bytearray()

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None, int]]:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self._append(chunk, start, len(chunk))
                return
            if not self.size and nl - start <= self.max:  # common case: a whole line in the chunk
                yield self.lineno, chunk[start:nl], nl - start
                self.lineno += 1
            else:
                self._append(chunk, start, nl)
                yield self._emit()
            start = nl + 1

    def finish(self) -> Iterator[tuple[int, bytes | None, int]]:
        if self.size:
            yield self._emit()


class JsonlReader:
    """The documents of a JSONL stream, one per line."""

    def __init__(self, opts: ReadOptions):
        self.opts = opts
        self.splitter = LineSplitter(opts.max_doc_bytes)

    @property
    def pending_offset(self) -> int:
        return self.splitter.pending_offset

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject]:
        path, field, sp = item["path"], self.opts.text_field, self.splitter
        if stretch := item.get("range"):  # a stretch of a big file: its lines are numbered on
            sp.lineno = stretch[2]
        first = not stretch or stretch[0] == 0
        for chunk in chunks(head, stream, self.opts.chunk_bytes):
            if first and chunk.startswith(UTF8_BOM):
                chunk = chunk[3:]
            first = False
            for lineno, line, size in sp.feed(chunk):
                if (ev := _jsonl_line(path, lineno, line, size, field, self.opts)) is not None:
                    yield ev
        for lineno, line, size in sp.finish():
            if (ev := _jsonl_line(path, lineno, line, size, field, self.opts)) is not None:
                yield ev


def _snippet(data: bytes | str, n: int = 80) -> str:
    s = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else data
    return repr(s[:n] + ("…" if len(s) > n else ""))


def _jsonl_line(
    path: str, lineno: int, line: bytes | None, size: int, field: str, opts: ReadOptions
) -> Doc | Reject | None:
    if line is None:
        return Reject(
            path, lineno, "too_large", f"line of {size:,} bytes > max_doc_bytes={opts.max_doc_bytes:,}"
        )
    if not NON_SPACE.search(line):
        return None  # blank lines separate nothing in JSONL; they are not items
    try:
        obj = json.loads(line)
    except UnicodeDecodeError as e:
        return Reject(path, lineno, "undecodable", f"JSONL must be UTF-8: {e}")
    except ValueError as e:
        return Reject(path, lineno, "bad_json", f"{e}: {_snippet(line)}")
    if not isinstance(obj, dict):
        return Reject(
            path, lineno, "not_object", f"a JSON {type(obj).__name__}, not an object: {_snippet(line)}"
        )
    if field not in obj or obj[field] is None:
        keys = ", ".join(sorted(obj)[:10])
        return Reject(
            path,
            lineno,
            "missing_field",
            f"no {field!r} field (keys: {keys}); set text_field to the right key",
        )
    return text_value(path, lineno, obj[field], field)


register(
    "jsonl", streamed(JsonlReader), extensions=(".jsonl", ".ndjson"), offset_unit="line number (1-based)"
)
