"""Raw bytes -> UTF-8 text: the binary sniff, and decoding with legacy-encoding detection.

* `sniff_binary` says why a file's first bytes are not text (a known binary signature, a NUL
  byte, too many control bytes), or None.
* `TextDecoder` turns one file's documents into UTF-8: UTF-8 as is, a legacy encoding
  (cp1252, Latin-1, ...) by detection once per file; damaged UTF-8 is rejected, not guessed at.
* `text_value` checks a string that a parser already decoded (JSON, CSV, Parquet, docstrings).
"""

from __future__ import annotations

import codecs
import contextlib
import re
from typing import Any

from tasks.ingest.charsets import LOW_CONFIDENCE, Detected, detect_single_byte
from tasks.ingest.records import Doc, Reject

DETECT_BYTES = 1 << 16  # how much text charset detection looks at
UTF8_BOM = codecs.BOM_UTF8
NON_SPACE = re.compile(rb"\S")

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
INVALID_UTF8_SPLIT = 3  # a chunk boundary may cut a UTF-8 sequence of up to 4 bytes


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


def detect_legacy(sample: bytes | bytearray) -> Detected | None:
    """The legacy encoding of a non-UTF-8 text, with its confidence, or None when nothing fits.

    charset-normalizer proposes; a multi-byte encoding it ranks first (Shift-JIS, GB18030, ...)
    is taken as it says unless a single-byte code page reads as plausible text (confidence at
    least LOW_CONFIDENCE). Single-byte code pages are ranked by the plausibility of the text they
    decode to (tasks/ingest/charsets.py): charset-normalizer's own order is near random between
    them on short texts, and settling on cp1252 garbles Polish, Czech or Lithuanian words.
    """
    from charset_normalizer import from_bytes
    from charset_normalizer.utils import is_multi_byte_encoding

    sample = bytes(sample[:DETECT_BYTES])
    results = list(from_bytes(sample))
    if not results:
        return None
    first = codecs.lookup(results[0].encoding).name
    if first in ("utf-8", "ascii"):
        return None
    proposals = [r.encoding for r in results if not is_multi_byte_encoding(r.encoding)]
    single = detect_single_byte(sample, proposals)
    if is_multi_byte_encoding(results[0].encoding) and (single is None or single.confidence < LOW_CONFIDENCE):
        # charset-normalizer also calls a short Cyrillic text Shift-JIS: a plausible single-byte
        # reading goes first
        return Detected(first, round(max(0.0, 1 - results[0].chaos), 4), results[0].language)
    return single


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

    `override` (IngestConfig.encoding) replaces detection: text that is not UTF-8 is decoded with
    it, or rejected when it does not fit.
    """

    def __init__(self, head: bytes, override: str | None = None):
        self.head = head
        self.legacy: Detected | bool | None = None  # False: detection found nothing
        self.override = override

    def decode(self, path: str, offset: int, data: bytes | bytearray) -> Doc | Reject:
        if offset == 0 and data[:3] == UTF8_BOM:
            if isinstance(data, bytearray):
                del data[:3]  # in place: no copy of a large document
            else:
                data = data[3:]
        if not NON_SPACE.search(data):
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
        if self.override:
            try:
                return Doc(path, offset, _transcode(data, self.override), self.override)
            except UnicodeDecodeError as e:
                return Reject(
                    path,
                    offset,
                    "undecodable",
                    f"{where}, and byte {e.start} is not valid {self.override} (ingest.encoding); "
                    "set the file's real encoding",
                )
        if self.legacy is None:  # once per file
            head_ok = _utf8_error(self.head[: len(self.head) - INVALID_UTF8_SPLIT]) is None
            self.legacy = (detect_legacy(data) if head_ok else detect_legacy(self.head)) or False
        tried = []
        for det in (self.legacy, None):
            det = det if det is not None else detect_legacy(data)  # this document's own guess
            if not det or det.encoding in tried:
                continue
            tried.append(det.encoding)
            with contextlib.suppress(UnicodeDecodeError):
                data = _transcode(data, det.encoding)
                return Doc(path, offset, data, det.encoding, {"encoding_confidence": det.confidence})
        return Reject(
            path,
            offset,
            "undecodable",
            f"{where} and no legacy encoding fits; convert the file to UTF-8 (e.g. iconv -f <enc> -t utf-8)",
        )


def text_value(path: str, offset: int, value: Any, name: str) -> Doc | Reject:
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
