"""Opening an item as a stream of decompressed bytes: gzip, bz2, xz and zstd, read incrementally.

`open_item` gives a local file's or a URL's bytes, decompressed by the file name's suffix
(`COMPRESSIONS`). Three wrappers make failures tell apart and lose nothing they need not:

* a read error of the file or URL itself comes out as `RawReadError` (not as a decompression
  error), so a URL failing mid-read is retried while a corrupt .gz is quarantined;
* a truncated zstd frame raises EOFError, as gzip, bz2 and xz already do;
* the documents decoded before a stream broke are still returned (`_Salvaging`).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
from collections.abc import Iterator
from typing import Any, BinaryIO

import zstandard

from tasks.ingest.records import OnBytes
from tasks.ingest.urls import SourceUnavailable, redacted_error, url_fs

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}


class RawReadError(Exception):
    """The underlying file or URL failed to read (told apart from decompression errors)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class _Guarded(io.RawIOBase):
    """The raw source, with its read errors turned into `RawReadError`; `limit`: at most this many
    bytes are read (a stretch of a big file, plan.py)."""

    def __init__(self, f: BinaryIO, on_bytes: OnBytes | None = None, limit: int | None = None):
        self._f = f
        self._on_bytes = on_bytes
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = len(b) if self._left is None else min(len(b), self._left)
        try:
            data = self._f.read(want) if want else b""
        except Exception as e:
            raise RawReadError(e) from e
        n = len(data)
        b[:n] = data
        if self._left is not None:
            self._left -= n
        if self._on_bytes:
            self._on_bytes(n)
        return n


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression that notices a stream cut short (multi-frame aware).

    `zstandard`'s stream_reader returns a silent EOF on a truncated frame; a decompressobj tells us
    (`eof` stays False). Input goes in 8 KiB pieces, which bounds a single call's output even for
    highly compressible data.
    """

    PIECE = 8192

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._fed = False  # the current frame has input
        self._out = b""
        self._pos = 0
        self._pending = b""  # input not yet fed

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._out):
            if not self._pending:
                self._pending = self._raw.read(1 << 16)
                if not self._pending:
                    if self._fed:
                        raise EOFError("zstd stream ends before the end of its frame")
                    return 0
            piece, self._pending = self._pending[: self.PIECE], self._pending[self.PIECE :]
            self._out, self._pos = self._d.decompress(piece), 0
            self._fed = True
            if self._d.eof:
                rest = self._d.unused_data
                self._pending = rest + self._pending
                self._d = self._dctx.decompressobj()
                self._fed = False
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n


def decompressed(raw: BinaryIO, compression: str | None) -> BinaryIO:
    buffered = io.BufferedReader(raw, buffer_size=1 << 16)  # type: ignore[arg-type]
    if compression is None:
        return buffered
    if compression == "gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(buffered, mode="rb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(buffered, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        return io.BufferedReader(_ZstdReader(buffered), buffer_size=1 << 16)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {compression!r}")


@contextlib.contextmanager
def open_item(item: dict[str, Any], on_bytes: OnBytes | None) -> Iterator[BinaryIO]:
    """The item's decompressed byte stream. OSError on open (local), SourceUnavailable (URL)."""
    if item["kind"] == "url":
        url = item["url"]
        try:
            fs, path = url_fs(url)
            protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
            kwargs = {"block_size": 0} if "http" in protocols else {}  # stream, no range requests
            f = fs.open(path, "rb", **kwargs)
        except FileNotFoundError:
            raise SourceUnavailable(f"{item['path']} disappeared since the plan (404)") from None
        except Exception as e:
            raise SourceUnavailable(f"{item['path']} cannot be opened: {redacted_error(e, url)}") from None
    else:
        f = open(item["path"], "rb", buffering=0)  # noqa: SIM115 (closed below)
    limit = None
    if stretch := item.get("range"):  # [start, end, first line] of a big file (plan.py)
        f.seek(stretch[0])
        limit = stretch[1] - stretch[0]
    try:
        yield _Salvaging(decompressed(_Guarded(f, on_bytes, limit), item.get("compression")))  # type: ignore[misc]
    finally:
        with contextlib.suppress(Exception):
            f.close()


class _Salvaging:
    """A decompressed stream whose reads keep what was decoded before the stream broke.

    A buffered or decompressing `read(n)` that hits a truncated or corrupt stream raises and
    drops everything it had decoded in that call: a truncated .gz smaller than one read (1 MiB)
    lost all its documents. Here `read(n)` gathers `read1` pieces (each the output of one read of
    the layer below) until it has n bytes or the stream ends, so short reads (network streams
    return what they have) are looped over too. An error after some data is held back, that data
    returned, and the error raised by the next read: the documents before the break are kept and
    the reject starts where they end.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        parts, got = [], 0
        while n < 0 or got < n:
            try:
                b = self._stream.read1(n - got if n >= 0 else 1 << 20)
            except Exception as e:
                if not parts:
                    raise
                self._error = e
                break
            if not b:
                break
            parts.append(b)
            got += len(b)
        return b"".join(parts)
