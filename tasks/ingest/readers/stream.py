"""What every file format's reader shares: open the stream, sniff it, turn failures into rejects.

A format that reads a byte stream (text, JSONL, CSV, Parquet) writes a `StreamReader` class and
registers `streamed(ThatClass)`. `read_stream` then does the rest, the same way for every format:

* opens the item (decompressed; a URL streamed) and reads its head;
* rejects an empty file (`empty`), UTF-16/32 text (`undecodable`) and binary data (`binary`),
  unless the format is binary itself (Parquet);
* makes the reader and yields what it yields;
* turns an error into one last reject: `truncated` or `corrupt` for a broken compressed stream,
  `unreadable` for a failing file, at the offset where the unfinished document starts (the
  documents before the break are kept); a URL failing mid-read raises SourceUnavailable instead,
  for the flow to retry;
* rejects a file that yielded nothing at all (`empty`).
"""

from __future__ import annotations

import codecs
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

import zstandard

from tasks.ingest.decode import sniff_binary
from tasks.ingest.decompress import RawReadError, open_item
from tasks.ingest.readers.registry import ItemReader
from tasks.ingest.records import Doc, OnBytes, ReadOptions, Reject
from tasks.ingest.urls import SourceUnavailable, redacted_error

SNIFF_BYTES = 8192  # how much of a file's start decides "binary or text" (git looks at 8000)


class Prefixed(io.RawIOBase):
    """`head` followed by the rest of `stream`: a sniffed stream read again from its start (CSV, WARC)."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if len(self._head):
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(b))
        b[: len(data)] = data
        return len(data)


class StreamReader(Protocol):
    """Reads the documents of one item's (decompressed) byte stream. Made per item, after the sniff."""

    @property
    def pending_offset(self) -> int:
        """Where the unfinished document starts: what a stream that breaks now loses."""
        ...

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject]:
        """Documents and rejects of the stream; `head` is its first bytes, already read."""
        ...


def streamed(make_reader: Callable[[ReadOptions], StreamReader], sniff_text: bool = True) -> ItemReader:
    """The item reader of a stream format: `read_stream` with this format's reader.

    `sniff_text=False` skips the UTF-16 and binary checks, for a binary format (Parquet).
    """

    def read(item: dict[str, Any], opts: ReadOptions, on_bytes: OnBytes | None) -> Iterator[Doc | Reject]:
        return read_stream(item, opts, on_bytes, make_reader, sniff_text)

    return read


def read_stream(
    item: dict[str, Any],
    opts: ReadOptions,
    on_bytes: OnBytes | None,
    make_reader: Callable[[ReadOptions], StreamReader],
    sniff_text: bool,
) -> Iterator[Doc | Reject]:
    """Every document and reject of one file or URL item. Raises only SourceUnavailable (transient)."""
    path, kind = item["path"], item["kind"]
    n_items = 0
    reader = None
    try:
        with open_item(item, on_bytes) as stream:
            head = stream.read(max(SNIFF_BYTES, min(opts.chunk_bytes, 1 << 20)))
            if not head:
                yield Reject(path, 0, "empty", "the file is empty (0 bytes)")
                return
            if sniff_text and head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                yield Reject(
                    path, 0, "undecodable", "UTF-16/32 text; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
                )
                return
            why = sniff_binary(head) if sniff_text else None
            if why:
                yield Reject(path, 0, "binary", why)
                return
            reader = make_reader(opts)
            for ev in reader.read(item, head, stream):
                n_items += 1
                yield ev
    except RawReadError as e:
        if kind == "url":
            url = item["url"]
            raise SourceUnavailable(f"{path}: read failed: {redacted_error(e.cause, url)}") from None
        offset = reader.pending_offset if reader else 0
        yield Reject(path, offset, "unreadable", f"read error: {e.cause}")
        n_items += 1
    except SourceUnavailable:
        raise
    except PermissionError as e:
        yield Reject(path, 0, "unreadable", f"permission denied ({e.strerror}); fix the file's permissions")
        n_items += 1
    except IsADirectoryError:
        yield Reject(path, 0, "unreadable", "is a folder")
        n_items += 1
    except EOFError as e:
        offset = reader.pending_offset if reader else 0
        yield Reject(
            path, offset, "truncated", f"{_what_compressed(item)} ends early ({e}); {_kept(n_items)}"
        )
        n_items += 1
    except (OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as e:
        offset = reader.pending_offset if reader else 0
        if item.get("compression"):
            reason, what = "corrupt", f"{_what_compressed(item)} cannot be decoded ({e}); {_kept(n_items)}"
        else:
            reason, what = "unreadable", f"read error: {e}"
        yield Reject(path, offset, reason, what)
        n_items += 1
    if n_items == 0 and not item.get("range"):  # (a stretch of a big file: its blank lines are none)
        yield Reject(path, 0, "empty", "the file holds no document (only whitespace or separators)")


def _what_compressed(item: dict[str, Any]) -> str:
    return f"the {item.get('compression')} stream" if item.get("compression") else "the file"


def _kept(n: int) -> str:
    return f"the {n:,} items before the break were kept, the rest is lost" if n else "nothing was kept"


def chunks(head: bytes, stream: BinaryIO, size: int) -> Iterator[bytes]:
    """`head`, then the rest of `stream` in pieces of `size` bytes."""
    if head:
        yield head
    while chunk := stream.read(size):
        yield chunk
