"""Plain text (.txt, .md, and any file whose name no other format claims): one document per file,
or documents cut at blank lines or at `%` lines (the fortune format), as `split` says.

Offsets are byte offsets in the decompressed file, before decoding; each file is decoded with
its own TextDecoder (UTF-8, or its legacy encoding).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from tasks.ingest.decode import NON_SPACE, TextDecoder
from tasks.ingest.readers.registry import register
from tasks.ingest.readers.stream import chunks, streamed
from tasks.ingest.records import Doc, ReadOptions, Reject

# A document boundary in split modes is a whole *line*: blank (only whitespace) or only `%`.
# The patterns find "\n" + separator line, so the regex engine can use its fast literal search
# for "\n" (three times faster than a `^`-anchored MULTILINE pattern); a separator on the very
# first line of a buffer is checked with the `_FIRST` patterns.
_SEP_NEXT = {
    "blank_line": re.compile(rb"\n[ \t\r\f\v]*(?=\n)"),
    "percent_line": re.compile(rb"\n%[ \t\r\f\v]*(?=\n)"),
}
_SEP_FIRST = {
    "blank_line": re.compile(rb"[ \t\r\f\v]*\n"),
    "percent_line": re.compile(rb"%[ \t\r\f\v]*\n"),
}
# A partial last line that may still turn out to be a separator once its newline arrives.
_SEP_PREFIX = {
    "blank_line": re.compile(rb"[ \t\r\f\v]*"),
    "percent_line": re.compile(rb"(?:%[ \t\r\f\v]*)?"),
}


class TextSplitter:
    """Cuts a byte stream into documents at separator lines, holding at most one document.

    split="file": the whole stream is one document, kept byte for byte.
    split="blank_line" / "percent_line": documents are the runs of lines between separator lines
    (lines holding only whitespace / only `%`); a document's last newline is dropped.
    Whitespace-only runs between separators are not documents.

    Feed chunks with `feed` (yields finished documents as (offset, data | None, size); data is
    None when the document is larger than `max_doc_bytes`), then call `finish`.
    `pending_offset` is where the unfinished document (or the unread rest) starts: what a
    truncated stream loses.
    """

    def __init__(self, split: str, max_doc_bytes: int):
        self.split = split
        self.max = max_doc_bytes
        self.pos = 0  # stream offset of the next byte to consume (the start of `carry`)
        self.carry = b""  # a partial last line that may still become a separator
        self.mid_line = False  # the current line is content and goes on in the next chunk
        self._new_doc()

    def _new_doc(self) -> None:
        self.doc = bytearray()
        self.start: int | None = None
        self.size = 0

    @property
    def pending_offset(self) -> int:
        return self.start if self.start is not None else self.pos

    def _add(self, buf: memoryview, a: int, b: int, base: int) -> None:
        if b <= a:
            return
        if self.start is None:
            self.start = base + a
        self.size += b - a
        if self.size > self.max:
            if self.doc:
                self.doc = bytearray()  # too large: keep counting, stop holding
        else:
            self.doc += buf[a:b]

    def _close(self) -> Iterator[tuple[int, bytearray | None, int]]:
        if self.start is None:
            return
        start, doc, size = self.start, self.doc, self.size
        self._new_doc()
        if size > self.max:
            yield start, None, size
            return
        if self.split != "file":
            if doc.endswith(b"\n"):
                del doc[-1]
            if doc.endswith(b"\r"):
                del doc[-1]
            if not NON_SPACE.search(doc):
                return
        yield start, doc, len(doc)

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytearray | None, int]]:
        if not chunk:
            return
        if self.split == "file":
            self._add(memoryview(chunk), 0, len(chunk), self.pos)
            self.pos += len(chunk)
            return
        if self.mid_line:  # finish the long line first, without copying the chunk
            nl = chunk.find(b"\n")
            end = len(chunk) if nl < 0 else nl + 1
            self._add(memoryview(chunk), 0, end, self.pos)
            self.pos += end
            if nl < 0:
                return
            self.mid_line = False
            chunk = chunk[end:]
        buf = self.carry + chunk if self.carry else chunk
        base = self.pos
        end = buf.rfind(b"\n") + 1  # buf[:end] holds complete lines
        mv = memoryview(buf)
        yield from self._scan(buf, mv, end, base)
        tail = buf[end:]
        if tail and not _SEP_PREFIX[self.split].fullmatch(tail):
            self._add(mv, end, len(buf), base)  # certainly content: no need to keep it apart
            self.carry, self.mid_line = b"", True
            self.pos = base + len(buf)
        else:
            self.carry = tail
            self.pos = base + end

    def _scan(self, buf: bytes, mv: memoryview, end: int, base: int) -> Iterator:
        """Documents in buf[:end] (complete lines, starting at a line start)."""
        if end == 0:
            return
        pos = 0
        first = _SEP_FIRST[self.split].match(buf, 0, end)
        if first:
            yield from self._close()
            pos = first.end()
        for m in _SEP_NEXT[self.split].finditer(buf, max(pos - 1, 0), end):
            line_start = m.start() + 1
            if line_start < pos:
                continue
            self._add(mv, pos, line_start, base)
            yield from self._close()
            pos = m.end() + 1
        self._add(mv, pos, end, base)

    def finish(self) -> Iterator[tuple[int, bytearray | None, int]]:
        if self.carry:
            buf = self.carry + b"\n"
            if not _SEP_FIRST[self.split].fullmatch(buf):
                self._add(memoryview(self.carry), 0, len(self.carry), self.pos)
            self.pos += len(self.carry)
            self.carry = b""
        yield from self._close()


class TextReader:
    """A text file's documents, split as `opts.split` says, each decoded to UTF-8."""

    def __init__(self, opts: ReadOptions):
        self.opts = opts
        self.splitter = TextSplitter(opts.split, opts.max_doc_bytes)

    @property
    def pending_offset(self) -> int:
        return self.splitter.pending_offset

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject]:
        path, sp = item["path"], self.splitter
        dec = TextDecoder(head, self.opts.encoding)
        for chunk in chunks(head, stream, self.opts.chunk_bytes):
            for offset, data, size in sp.feed(chunk):
                yield self._finish(dec, path, offset, data, size)
        for offset, data, size in sp.finish():
            yield self._finish(dec, path, offset, data, size)

    def _finish(
        self, dec: TextDecoder, path: str, offset: int, data: bytes | bytearray | None, size: int
    ) -> Doc | Reject:
        if data is None:
            return Reject(
                path,
                offset,
                "too_large",
                f"{size:,} bytes > max_doc_bytes={self.opts.max_doc_bytes:,}; raise it",
            )
        return dec.decode(path, offset, data)


register(
    "text",
    streamed(TextReader),
    extensions=(".txt", ".md"),
    offset_unit="byte offset (0-based) in the decompressed file, before decoding",
)
