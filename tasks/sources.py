"""Where ingest's documents come from, and how raw bytes become UTF-8 text.

`tasks/ingest.py` plans, writes and commits; this module only finds and reads inputs:

* `enumerate_sources` turns what the user typed (files, folders, globs, URLs, `python-docs`) into
  *items*: small JSON-able dicts, one per file or URL, or an `error` item for something found but
  unusable (a symlink loop, an unreadable folder) so that it reaches the quarantine instead of
  being lost. A source that does not exist at all raises `StageError` here, before any work.
* `read_item` streams one item and yields `Doc` (UTF-8 bytes ready to store) and `Reject`
  (what goes to the quarantine, with a short reason code). It never raises for bad *content*;
  it raises only for transient network trouble (`SourceUnavailable`), which a flow retries.

Memory stays bounded: files are read in chunks of `chunk_bytes`, compressed streams are
decompressed incrementally, and at most one document (capped at `max_doc_bytes`) is held.

The `offset` of a document or reject depends on the format (see `OFFSET_UNITS`): a 0-based byte
offset in the (decompressed) file for text, a 1-based line number for JSONL and CSV (the line a
record starts on), a 1-based row number for Parquet, the 1-based source line of the docstring for
`python-docs`.
"""

from __future__ import annotations

import ast
import bz2
import codecs
import contextlib
import csv
import errno
import glob
import gzip
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import sysconfig
import tokenize
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from tasks.common import StageError

log = logging.getLogger("forja.ingest")

PYTHON_DOCS = "python-docs"
SNIFF_BYTES = 8192  # how much of a file's start decides "binary or text" (git looks at 8000)
DETECT_BYTES = 1 << 16  # how much text charset detection looks at
UTF8_BOM = codecs.BOM_UTF8

# Short reason codes of the quarantine, with what each means (the manifest carries this table).
REASONS: dict[str, str] = {
    "binary": "binary data (NUL bytes, many control bytes, or a known binary signature)",
    "undecodable": "neither valid UTF-8 nor a detectable legacy encoding",
    "empty": "an empty or whitespace-only file, or one that holds no document",
    "unreadable": "the file or folder cannot be read (permissions, I/O error, not a regular file)",
    "symlink_loop": "a symbolic link that points back to itself or to a folder above it",
    "broken_symlink": "a symbolic link whose target does not exist",
    "truncated": "a compressed stream that ends early; documents before the break were kept",
    "corrupt": "a compressed stream or Parquet file that cannot be decoded at all",
    "bad_json": "a JSONL line that is not valid JSON",
    "not_object": "a JSONL line whose value is not a JSON object",
    "missing_field": "a JSONL object or CSV/Parquet row without the text field, or with a null",
    "not_string": "a text field or column that is not a string",
    "missing_column": "a CSV or Parquet file without the text column",
    "bad_csv_row": "a CSV record the csv module cannot parse",
    "too_large": "a document larger than max_doc_bytes",
    "syntax_error": "a standard-library file that Python cannot parse (python-docs)",
}

OFFSET_UNITS: dict[str, str] = {
    "text": "byte offset (0-based) in the decompressed file, before decoding",
    "jsonl": "line number (1-based)",
    "csv": "line number (1-based) where the record starts; line 1 is the header",
    "parquet": "row number (1-based)",
    "python-docs": "source line (1-based) of the docstring",
}

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}  # anything else (.txt, .md, no extension, ...) is read as text, after a binary sniff

# Signatures of common binary formats whose first 8 KiB may hold no NUL byte.
_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "ZIP archive (also .docx, .xlsx, .epub, .jar)"),
    (b"\x7fELF", "ELF executable"),
    (b"\x1f\x8b", "gzip data (name it *.gz to read it)"),
    (b"\x28\xb5\x2f\xfd", "zstd data (name it *.zst to read it)"),
    (b"\xfd7zXZ\x00", "xz data (name it *.xz to read it)"),
    (b"BZh91AY&SY", "bzip2 data (name it *.bz2 to read it)"),
    (b"PAR1\x15", "Parquet file (name it *.parquet to read it)"),
]
# Control bytes that do not occur in text (tab, newlines, form feed, escape do).
_CONTROL = bytes([*range(0, 8), 11, *range(14, 27), *range(28, 32), 127])
_CONTROL_SHARE = 0.10  # a text with more than 10% control bytes is binary
_NON_SPACE = re.compile(rb"\S")
_INVALID_UTF8_SPLIT = 3  # a chunk boundary may cut a UTF-8 sequence of up to 4 bytes

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

_SECRET_PARAM = re.compile(
    r"(token|key|secret|sig|signature|password|passwd|pwd|auth|credential|session)", re.I
)


class _RedactURLs(logging.Filter):
    """fsspec logs URLs, credentials included, at DEBUG level: blank them out."""

    _CREDS = re.compile(r"(://)[^/@\s]+@")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "@" in msg:
            record.msg, record.args = self._CREDS.sub(r"\1***@", msg), ()
        return True


for _name in ("fsspec", "fsspec.http", "fsspec.generic"):
    logging.getLogger(_name).addFilter(_RedactURLs())


class SourceUnavailable(ConnectionError):
    """A remote source could not be reached or read (transient): a later retry may succeed."""


@dataclass(slots=True)
class Doc:
    """A document ready to store: `data` is valid UTF-8."""

    path: str
    offset: int
    data: bytes | bytearray
    encoding: str


@dataclass(slots=True)
class Reject:
    """Something that goes to the quarantine instead of the data parts."""

    path: str
    offset: int
    reason: str
    detail: str


# --------------------------------------------------------------------------- sources -> items


def redact(source: str) -> str:
    """`source` with URL credentials (user:password@, secret-looking query values) replaced by ***."""
    if "://" not in source:
        return source
    try:
        parts = urllib.parse.urlsplit(source)
    except ValueError:
        return source
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = "&".join(
                f"{urllib.parse.quote(k)}=***" if _SECRET_PARAM.search(k) else f"{k}={v}" for k, v in pairs
            )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_url(source: str) -> bool:
    scheme = source.split("://", 1)[0] if "://" in source else ""
    return bool(scheme) and scheme != "file" and scheme.isalnum()


def format_of(name: str) -> tuple[str, str | None]:
    """(format, compression) from a file name: `a.jsonl.zst` -> ("jsonl", "zstd")."""
    name = name.lower()
    compression = None
    for ext, comp in COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    fmt = next((f for ext, f in FORMATS.items() if name.endswith(ext)), "text")
    return fmt, compression


class _Enumerator:
    """Collects items in a deterministic order, each real file once."""

    def __init__(self, include_hidden: bool, exclude: list[str | os.PathLike]):
        self.include_hidden = include_hidden
        self.items: list[dict[str, Any]] = []
        self.skipped = {"hidden": 0, "duplicate_inputs": 0, "excluded": 0}
        self._files: set[tuple[int, int]] = set()
        self._dirs: set[tuple[int, int]] = set()
        self._exclude: set[tuple[int, int]] = set()
        for p in exclude:
            with contextlib.suppress(OSError):
                st = os.stat(p)
                self._exclude.add((st.st_dev, st.st_ino))

    def error(self, source: str, path: str, reason: str, detail: str) -> None:
        item = {"kind": "error", "source": source, "path": os.path.abspath(path), "size": 0}
        self.items.append({**item, "reason": reason, "detail": detail})

    def file(self, source: str, path: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self._files:
            self.skipped["duplicate_inputs"] += 1
            log.info("skipping %s: the same file was already listed by an earlier source", path)
            return
        self._files.add(key)
        fmt, comp = format_of(os.path.basename(path))
        self.items.append(
            {
                "kind": "file",
                "source": source,
                "path": os.path.abspath(path),
                "size": st.st_size,
                "format": fmt,
                "compression": comp,
            }
        )

    def stat_error(self, source: str, path: str, e: OSError) -> None:
        if e.errno == errno.ELOOP:
            self.error(source, path, "symlink_loop", f"{path}: symbolic link loop ({e.strerror})")
        elif os.path.islink(path) and e.errno == errno.ENOENT:
            self.error(source, path, "broken_symlink", f"{path} -> {os.readlink(path)}: target missing")
        else:
            self.error(source, path, "unreadable", f"{path}: {e.strerror or e}")

    def path(self, source: str, path: str, ancestors: frozenset[tuple[int, int]] = frozenset()) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            self.stat_error(source, path, e)
            return
        if stat.S_ISDIR(st.st_mode):
            self.folder(source, path, st, ancestors)
        elif stat.S_ISREG(st.st_mode):
            self.file(source, path, st)
        else:
            self.error(source, path, "unreadable", f"{path} is not a regular file (a FIFO, socket or device)")

    def folder(
        self, source: str, path: str, st: os.stat_result, ancestors: frozenset[tuple[int, int]]
    ) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self._exclude:
            self.skipped["excluded"] += 1
            log.info("skipping %s: it is the ingest output folder", path)
            return
        if key in ancestors:
            self.error(source, path, "symlink_loop", f"{path} leads back to a folder above it")
            return
        if key in self._dirs:
            self.skipped["duplicate_inputs"] += 1
            log.info("skipping %s: the same folder was already listed", path)
            return
        self._dirs.add(key)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.error(source, path, "unreadable", f"cannot list folder {path}: {e.strerror or e}")
            return
        for entry in entries:
            if entry.name.startswith(".") and not self.include_hidden:
                self.skipped["hidden"] += 1
                continue
            self.path(source, entry.path, ancestors | {key})


def enumerate_sources(
    sources: list[str], include_hidden: bool = False, exclude: list[str | os.PathLike] | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Items for every source, in order; and counts of what was skipped (hidden, duplicates).

    Raises StageError for a source that does not exist (missing path, glob matching nothing,
    URL answering 404, empty folder), before anything is read.
    """
    if not sources:
        raise StageError("no sources given: pass files, folders, globs, URLs or 'python-docs'")
    en = _Enumerator(include_hidden, exclude or [])
    for source in sources:
        if not isinstance(source, str) or not source.strip():
            raise StageError(f"source {source!r} is empty; pass a path, glob, URL or 'python-docs'")
        shown = redact(source)
        before, dups_before = len(en.items), en.skipped["duplicate_inputs"]
        if source == PYTHON_DOCS:
            if PYTHON_DOCS in (it["kind"] for it in en.items):
                en.skipped["duplicate_inputs"] += 1
                continue
            en.items.extend(python_docs_items())
        elif is_url(source):
            en.items.append(_url_item(source))
        elif source.startswith("file://"):
            _local_source(en, urllib.parse.unquote(urllib.parse.urlsplit(source).path), shown)
        else:
            _local_source(en, source, shown)
        if len(en.items) == before and source != PYTHON_DOCS:
            if en.skipped["duplicate_inputs"] > dups_before:
                continue  # everything it holds was listed by an earlier source
            raise StageError(
                f"source {shown!r} holds no files to read (only hidden files or nothing at all); "
                "point it at a folder with text, or set include_hidden=true"
            )
    return en.items, en.skipped


def _local_source(en: _Enumerator, source: str, shown: str) -> None:
    if any(c in source for c in "*?["):
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            raise StageError(f"source {shown!r}: the glob matches no file; check the pattern")
        for m in matches:
            en.path(shown, m)
    elif os.path.lexists(source):
        en.path(shown, source)
    else:
        raise StageError(f"source {shown!r} does not exist; check the path (relative to {os.getcwd()})")


def _url_item(url: str) -> dict[str, Any]:
    """Check that a URL exists: 404 / 410 -> StageError, 401 / 403 -> StageError (credentials),
    anything else (5xx, 429, refused connection, timeout) -> SourceUnavailable, to be retried."""
    import fsspec

    shown = redact(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except (ImportError, ValueError) as e:
        raise StageError(f"source {shown!r}: unsupported URL ({type(e).__name__}: {e})") from None
    except Exception as e:
        # fsspec's HTTP info turns every failure into FileNotFoundError; the cause tells them apart.
        status, cause = _http_status(e)
        if status in (404, 410) or (status is None and cause is None and isinstance(e, FileNotFoundError)):
            raise StageError(f"source {shown!r} does not exist (not found); check the URL") from None
        if status in (401, 403):
            raise StageError(
                f"source {shown!r}: access denied (HTTP {status}); check the credentials"
            ) from None
        raise SourceUnavailable(
            f"source {shown!r} cannot be reached: {_redacted_error(cause or e, url)}"
        ) from None
    fmt, comp = format_of(urllib.parse.urlsplit(url).path)
    size = info.get("size")
    return {
        "kind": "url",
        "source": shown,
        "path": shown,
        "url": url,
        "size": int(size) if size is not None else None,
        "format": fmt,
        "compression": comp,
    }


def _http_status(e: BaseException) -> tuple[int | None, BaseException | None]:
    """The HTTP status (if any) and the underlying error behind an fsspec exception."""
    seen, cur, cause = set(), e, None
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        status = getattr(cur, "status", None) or getattr(cur, "code", None)
        if isinstance(status, int):
            return status, cur
        if cur is not e:
            cause = cur
        cur = cur.__cause__ or cur.__context__
    return None, cause


def _redacted_error(e: BaseException, url: str) -> str:
    return f"{type(e).__name__}: {str(e).replace(url, redact(url))}"


_SKIP_STDLIB_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def python_docs_items() -> list[dict[str, Any]]:
    """One item per standard-library .py file (sorted), test suites and site-packages excluded.

    Skipping the test packages (`test/`, `*/tests/`, `idlelib/idle_test/`) leaves about 8,800
    docstrings / 1.8 MB on CPython 3.11: real English prose about code, with little repetition.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_STDLIB_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            items.append(
                {
                    "kind": PYTHON_DOCS,
                    "source": PYTHON_DOCS,
                    "path": str(path),
                    "module": ".".join(parts),
                    "size": path.stat().st_size,
                }
            )
    items.sort(key=lambda it: it["module"])
    return items


# --------------------------------------------------------------------------- streams


class _RawReadError(Exception):
    """The underlying file or URL failed to read (told apart from decompression errors)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class _Guarded(io.RawIOBase):
    """The raw source, with its read errors turned into `_RawReadError`."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None] | None = None):
        self._f = f
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._f.read(len(b))
        except Exception as e:
            raise _RawReadError(e) from e
        n = len(data)
        b[:n] = data
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


def _decompressed(raw: BinaryIO, compression: str | None) -> BinaryIO:
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
def _open_item(item: dict[str, Any], on_bytes: Callable[[int], None] | None) -> Iterator[BinaryIO]:
    """The item's decompressed byte stream. OSError on open (local), SourceUnavailable (URL)."""
    if item["kind"] == "url":
        import fsspec

        url = item["url"]
        try:
            fs, path = fsspec.core.url_to_fs(url)
            protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
            kwargs = {"block_size": 0} if "http" in protocols else {}  # stream, no range requests
            f = fs.open(path, "rb", **kwargs)
        except FileNotFoundError:
            raise SourceUnavailable(f"{item['path']} disappeared since the plan (404)") from None
        except Exception as e:
            raise SourceUnavailable(f"{item['path']} cannot be opened: {_redacted_error(e, url)}") from None
    else:
        f = open(item["path"], "rb", buffering=0)  # noqa: SIM115 (closed below)
    try:
        yield _Salvaging(_decompressed(_Guarded(f, on_bytes), item.get("compression")))  # type: ignore[misc]
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


def sniff_binary(head: bytes) -> str | None:
    """Why `head` (a file's first bytes) looks binary, or None for text."""
    for sig, what in _SIGNATURES:
        if head.startswith(sig):
            return f"{what} signature at the start"
    nul = head.find(b"\x00")
    if nul >= 0:
        return f"NUL byte at offset {nul}"
    if head:
        n_ctrl = len(head) - len(head.translate(None, _CONTROL))
        if n_ctrl / len(head) > _CONTROL_SHARE:
            return f"{n_ctrl / len(head):.0%} control bytes in the first {len(head):,} bytes"
    return None


# --------------------------------------------------------------------------- decoding


def _utf8_error(data: bytes | bytearray | memoryview) -> UnicodeDecodeError | None:
    """The first UTF-8 error in data, or None; checked in pieces so no copy of a huge doc is made."""
    mv = memoryview(data)
    if len(mv) <= 1 << 22:
        try:
            codecs.utf_8_decode(mv, "strict", True)
        except UnicodeDecodeError as e:
            return e
        return None
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    step = 1 << 22
    for i in range(0, len(mv), step):
        try:
            dec.decode(mv[i : i + step], final=i + step >= len(mv))
        except UnicodeDecodeError as e:
            return UnicodeDecodeError("utf-8", b"", i + e.start, i + e.end, e.reason)
    return None


def _looks_like_broken_utf8(sample: bytes | bytearray) -> bool:
    """True when sample is mostly valid UTF-8 with a few bad bytes: damaged, not legacy-encoded.

    Legacy (Latin-1, cp1252) text almost never forms valid multi-byte UTF-8 sequences; damaged
    UTF-8 has many of them around the bad bytes. Guessing a legacy codec there garbles every
    valid character, so such text is quarantined instead.
    """
    text = bytes(sample).decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = sum(1 for ch in text if ch > "\x7f" and ch != "\ufffd")
    return good >= bad


def detect_legacy(sample: bytes | bytearray) -> str | None:
    """The legacy encoding of a non-UTF-8 text, by detection (charset-normalizer), or None.

    Ties go to cp1252: charset-normalizer ranks single-byte codecs that decode a text equally
    well almost at random on short samples (French Latin-1 comes out as cp1257), while cp1252 is
    by far the most common legacy encoding and a superset of Latin-1's printable range.
    """
    from charset_normalizer import from_bytes

    sample = bytes(sample[:DETECT_BYTES])
    results = list(from_bytes(sample))
    if not results:
        return None
    best = min(r.chaos for r in results)
    close = [r for r in results if r.chaos <= best + 0.05]
    if any("cp1252" in r.could_be_from_charset for r in close):
        with contextlib.suppress(UnicodeDecodeError):
            sample.decode("cp1252")
            return "cp1252"
    enc = codecs.lookup(close[0].encoding).name
    return None if enc in ("utf-8", "ascii") else enc


def _transcode(data: bytes | bytearray, encoding: str) -> bytes:
    """Decode `data` from a legacy encoding to UTF-8 bytes, in pieces (bounded extra memory)."""
    dec = codecs.getincrementaldecoder(encoding)("strict")
    mv, out, step = memoryview(data), bytearray(), 1 << 20
    for i in range(0, len(mv), step):
        out += dec.decode(mv[i : i + step], final=i + step >= len(mv)).encode("utf-8")
    if not len(mv):
        dec.decode(b"", final=True)
    return bytes(out)


class TextDecoder:
    """Turns one file's raw documents into UTF-8: UTF-8 as is, legacy encodings by detection.

    The legacy encoding is detected once per file (from its first 64 KiB when those are not UTF-8,
    else from the first document that is not) and reused for its later documents, so that one
    file decodes consistently.
    """

    def __init__(self, head: bytes):
        self.head = head
        self.legacy: str | None = None

    def decode(self, path: str, offset: int, data: bytes | bytearray) -> Doc | Reject:
        if offset == 0 and data[:3] == UTF8_BOM:
            if isinstance(data, bytearray):
                del data[:3]  # in place: no copy of a large document
            else:
                data = data[3:]
        if not _NON_SPACE.search(data):
            return Reject(path, offset, "empty", "only whitespace")
        nul = data.find(b"\x00")
        if nul >= 0:
            return Reject(
                path, offset, "binary", f"NUL byte at byte {nul} of the document (binary data in text)"
            )
        err = _utf8_error(data)
        if err is None:
            return Doc(path, offset, data, "utf-8")
        where = f"invalid UTF-8 byte {bytes(data[err.start : err.start + 1])!r} at byte {err.start}"
        if _looks_like_broken_utf8(data[: DETECT_BYTES * 4]):
            return Reject(
                path, offset, "undecodable", f"{where} in otherwise UTF-8 text (damaged file); repair it"
            )
        if self.legacy is None:  # once per file
            head_ok = _utf8_error(self.head[: len(self.head) - _INVALID_UTF8_SPLIT]) is None
            self.legacy = (detect_legacy(data) if head_ok else detect_legacy(self.head)) or ""
        tried = []
        for enc in (self.legacy, None):
            enc = enc if enc is not None else detect_legacy(data)  # this document's own guess
            if not enc or enc in tried:
                continue
            tried.append(enc)
            with contextlib.suppress(UnicodeDecodeError):
                return Doc(path, offset, _transcode(data, enc), enc)
        return Reject(
            path,
            offset,
            "undecodable",
            f"{where} and no legacy encoding fits; convert the file to UTF-8 (e.g. iconv -f <enc> -t utf-8)",
        )


# --------------------------------------------------------------------------- splitting


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
            if not _NON_SPACE.search(doc):
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


# --------------------------------------------------------------------------- readers


@dataclass(slots=True)
class ReadOptions:
    split: str = "file"
    text_field: str = "text"
    text_column: str = "text"
    max_doc_bytes: int = 256 << 20
    chunk_bytes: int = 1 << 20
    spool_dir: str | None = None  # where a remote or compressed Parquet file is copied to be read


def read_item(
    item: dict[str, Any], opts: ReadOptions, on_bytes: Callable[[int], None] | None = None
) -> Iterator[Doc | Reject]:
    """Every document and reject of one item. Raises only SourceUnavailable (transient)."""
    path, kind = item["path"], item["kind"]
    if kind == "error":
        yield Reject(path, 0, item["reason"], item["detail"])
        return
    if kind == PYTHON_DOCS:
        yield from _read_python_docs(item)
        if on_bytes:
            on_bytes(item["size"])
        return
    fmt = item["format"]
    n_items = 0
    reader = None
    try:
        with _open_item(item, on_bytes) as stream:
            head = stream.read(max(SNIFF_BYTES, min(opts.chunk_bytes, 1 << 20)))
            if not head:
                yield Reject(path, 0, "empty", "the file is empty (0 bytes)")
                return
            if fmt != "parquet" and head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                yield Reject(
                    path, 0, "undecodable", "UTF-16/32 text; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
                )
                return
            why = sniff_binary(head) if fmt != "parquet" else None
            if why:
                yield Reject(path, 0, "binary", why)
                return
            if fmt == "parquet":
                gen = _read_parquet(item, head, stream, opts)
            elif fmt in ("csv", "tsv"):
                gen = _read_csv(item, head, stream, opts)
            elif fmt == "jsonl":
                reader = LineSplitter(opts.max_doc_bytes)
                gen = _read_jsonl(item, head, stream, opts, reader)
            else:
                reader = TextSplitter(opts.split, opts.max_doc_bytes)
                gen = _read_text(item, head, stream, opts, reader)
            for ev in gen:
                n_items += 1
                yield ev
    except _RawReadError as e:
        if kind == "url":
            url = item["url"]
            raise SourceUnavailable(f"{path}: read failed: {_redacted_error(e.cause, url)}") from None
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
    if n_items == 0:
        yield Reject(path, 0, "empty", "the file holds no document (only whitespace or separators)")


def _what_compressed(item: dict[str, Any]) -> str:
    return f"the {item.get('compression')} stream" if item.get("compression") else "the file"


def _kept(n: int) -> str:
    return f"the {n:,} items before the break were kept, the rest is lost" if n else "nothing was kept"


def _chunks(head: bytes, stream: BinaryIO, size: int) -> Iterator[bytes]:
    if head:
        yield head
    while chunk := stream.read(size):
        yield chunk


def _read_text(
    item: dict[str, Any], head: bytes, stream: BinaryIO, opts: ReadOptions, sp: TextSplitter
) -> Iterator[Doc | Reject]:
    path = item["path"]
    dec = TextDecoder(head)
    for chunk in _chunks(head, stream, opts.chunk_bytes):
        for offset, data, size in sp.feed(chunk):
            yield _finish(dec, path, offset, data, size, opts)
    for offset, data, size in sp.finish():
        yield _finish(dec, path, offset, data, size, opts)


def _finish(
    dec: TextDecoder, path: str, offset: int, data: bytes | bytearray | None, size: int, opts: ReadOptions
) -> Doc | Reject:
    if data is None:
        return Reject(
            path, offset, "too_large", f"{size:,} bytes > max_doc_bytes={opts.max_doc_bytes:,}; raise it"
        )
    return dec.decode(path, offset, data)


def _read_jsonl(
    item: dict[str, Any], head: bytes, stream: BinaryIO, opts: ReadOptions, sp: LineSplitter
) -> Iterator[Doc | Reject]:
    path, field = item["path"], opts.text_field
    first = True
    for chunk in _chunks(head, stream, opts.chunk_bytes):
        if first and chunk.startswith(UTF8_BOM):
            chunk = chunk[3:]
        first = False
        for lineno, line, size in sp.feed(chunk):
            if (ev := _jsonl_line(path, lineno, line, size, field, opts)) is not None:
                yield ev
    for lineno, line, size in sp.finish():
        if (ev := _jsonl_line(path, lineno, line, size, field, opts)) is not None:
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
    if not _NON_SPACE.search(line):
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
    return _text_value(path, lineno, obj[field], field)


def _text_value(path: str, offset: int, value: Any, name: str) -> Doc | Reject:
    """A decoded string value (JSON, CSV, Parquet) as a Doc, or why not."""
    if not isinstance(value, str):
        return Reject(path, offset, "not_string", f"{name!r} is a {type(value).__name__}, not a string")
    if not value.strip():
        return Reject(path, offset, "empty", f"{name!r} is empty or whitespace")
    if "\x00" in value:
        return Reject(path, offset, "binary", f"{name!r} holds a NUL character")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        return Reject(path, offset, "undecodable", f"{name!r} holds a lone surrogate ({e.reason})")
    return Doc(path, offset, data, "utf-8")


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `stream`: lets a sniffed stream be read from the start."""

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


def _read_csv(
    item: dict[str, Any], head: bytes, stream: BinaryIO, opts: ReadOptions
) -> Iterator[Doc | Reject]:
    """CSV/TSV with Python's csv module: exact line numbers and per-record errors.

    Cells are decoded with surrogateescape, so a non-UTF-8 cell comes back as its original bytes
    and goes through the same legacy-encoding detection as text files.
    """
    path, col = item["path"], opts.text_column
    text = io.TextIOWrapper(
        io.BufferedReader(_Prefixed(head, stream), 1 << 16),
        encoding="utf-8",
        errors="surrogateescape",
        newline="",
    )
    csv.field_size_limit(min(opts.max_doc_bytes * 4, 2**31 - 1))
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
    idx = header.index(col)
    dec = TextDecoder(head)
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
            if errors_in_a_row > 1000:
                yield Reject(
                    path, reader.line_num + 1, "bad_csv_row", "too many bad records in a row; rest skipped"
                )
                return
            continue
        errors_in_a_row = 0
        if not row:
            continue  # a blank line is not a record
        if idx >= len(row):
            yield Reject(
                path, start_line, "missing_field", f"record has {len(row)} fields, {col!r} is #{idx + 1}"
            )
            continue
        value = row[idx]
        if not value.strip():
            yield Reject(path, start_line, "empty", f"{col!r} is empty or whitespace")
            continue
        raw = value.encode("utf-8", "surrogateescape")
        if len(raw) > opts.max_doc_bytes:
            yield Reject(
                path, start_line, "too_large", f"{len(raw):,} bytes > max_doc_bytes={opts.max_doc_bytes:,}"
            )
            continue
        yield dec.decode(path, start_line, raw)


def _read_parquet(
    item: dict[str, Any], head: bytes, stream: BinaryIO, opts: ReadOptions
) -> Iterator[Doc | Reject]:
    """Parquet needs random access: a local plain file is read in place, anything else (a URL, a
    compressed file) is first copied to `spool_dir` in chunks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, col = item["path"], opts.text_column
    spooled = None
    try:
        if item["kind"] == "file" and not item.get("compression"):
            source: Any = item["path"]
        else:
            spool = Path(opts.spool_dir or ".")
            spool.mkdir(parents=True, exist_ok=True)
            spooled = spool / f".spool-{os.getpid()}-{id(item)}.parquet"
            with open(spooled, "wb") as f:
                f.write(head)
                shutil.copyfileobj(stream, f, 1 << 20)
            source = spooled
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
        dec = TextDecoder(b"")
        row = 0
        try:
            for batch in pf.iter_batches(columns=[col], batch_size=1024):
                for value in batch.column(0).to_pylist():
                    row += 1
                    if value is None:
                        yield Reject(path, row, "missing_field", f"{col!r} is null")
                    elif is_binary:
                        if len(value) > opts.max_doc_bytes:
                            yield Reject(path, row, "too_large", f"{len(value):,} bytes > max_doc_bytes")
                        else:
                            yield dec.decode(path, row, value)
                    elif len(value) > opts.max_doc_bytes:
                        yield Reject(path, row, "too_large", f"{len(value):,} characters > max_doc_bytes")
                    else:
                        yield _text_value(path, row, value, col)
        except (pa.ArrowException, OSError) as e:
            yield Reject(path, row + 1, "corrupt", f"Parquet data cannot be read from row {row + 1}: {e}")
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)


def _read_python_docs(item: dict[str, Any]) -> Iterator[Doc | Reject]:
    """Docstrings of one stdlib module (module, classes, functions; nested ones too), in source
    order. The file is parsed with `ast`, never imported: importing `antigravity` opens a browser."""
    module, file = item["module"], item["path"]
    try:
        with open(file, "rb") as f:
            source = f.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        tree = ast.parse(source.decode(encoding), filename=file)
    except (SyntaxError, ValueError, UnicodeDecodeError, LookupError) as e:
        yield Reject(f"{PYTHON_DOCS}:{module}", getattr(e, "lineno", 0) or 0, "syntax_error", f"{file}: {e}")
        return
    except OSError as e:
        yield Reject(f"{PYTHON_DOCS}:{module}", 0, "unreadable", f"{file}: {e}")
        return

    defs = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef

    def docs_below(node: ast.AST, qualname: str) -> Iterator[Doc | Reject]:
        # Definitions anywhere in the statement blocks below `node`: also inside `if`, `try`, ...
        for field in ("body", "orelse", "handlers", "finalbody", "cases"):
            for child in getattr(node, field, None) or ():
                if isinstance(child, defs):
                    yield from docs_of(child, f"{qualname}.{child.name}")
                elif isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                    yield from docs_below(child, qualname)

    def docs_of(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef, qualname: str):
        doc = ast.get_docstring(node)
        if doc and doc.strip():
            yield _text_value(f"{PYTHON_DOCS}:{qualname}", node.body[0].lineno, doc, "docstring")
        yield from docs_below(node, qualname)

    yield from docs_of(tree, module)
