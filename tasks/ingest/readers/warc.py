"""Web archives: WARC, WET and ARC (.warc, .wet, .arc, each also .gz), read with warcio.

A document per record that holds text:

* `response` and `resource` records whose payload is HTML go through the HTML extractor
  (html.py), with the charset of the HTTP Content-Type header first; chunked transfer encoding
  and gzip/deflate/brotli content encoding are undone by warcio;
* `conversion` records (WET) and text/plain payloads are kept as text (UTF-8, the charset the
  header names, the `encoding` override, or detection);
* `request`, `metadata`, `warcinfo`, `revisit` and `continuation` records, and payloads that are not
  text (images, PDF), are counted (`skipped_warc_<type>`, `skipped_warc_non_text`) and skipped.

The record's URL, date and id and its payload's media type become columns (`url`, `date`,
`record_id`, `content_type`; HTML adds `title`). `offset` is the record's byte offset in the
decompressed archive (a `.warc.gz` is decompressed as one gzip stream of many members, which is
what per-record gzip is). A record cut short or that cannot be parsed is quarantined at its offset
(`truncated` / `corrupt`); every record before it is kept.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from warcio.bufferedreaders import ChunkedDataException

from tasks.ingest.decode import TextDecoder
from tasks.ingest.readers.html import codec_name, html_doc
from tasks.ingest.readers.registry import register
from tasks.ingest.readers.stream import Prefixed, streamed
from tasks.ingest.records import Doc, ReadOptions, Reject, Skip

KEPT = {"response", "resource", "conversion"}
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain",)


def _media_type(value: str | None) -> tuple[str, str | None]:
    """('text/html', 'iso-8859-2') from 'text/html; charset="ISO-8859-2"'."""
    if not value:
        return "", None
    parts = [p.strip() for p in value.split(";")]
    charset = next(
        (p.split("=", 1)[1].strip("\"' ") for p in parts[1:] if p.lower().startswith("charset=")), None
    )
    return parts[0].lower(), charset


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


class WarcReader:
    """Every record of one archive, in order."""

    def __init__(self, opts: ReadOptions):
        self.opts = opts
        self.offset = 0

    @property
    def pending_offset(self) -> int:
        return self.offset

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject | Skip]:
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed
        from warcio.statusandheaders import StatusAndHeadersParserException

        path = item["path"]
        raw = io.BufferedReader(Prefixed(head, stream), 1 << 16)
        it = ArchiveIterator(raw, arc2warc=True, ensure_http_headers=False)
        errors = (ArchiveLoadFailed, StatusAndHeadersParserException, ValueError, IndexError)
        records = 0
        while True:
            try:
                record = next(it)
            except StopIteration:
                break
            except errors as e:
                what = _kept(f"a record cannot be parsed ({e})", records)
                yield Reject(path, self.offset, "corrupt", what)
                return
            records += 1
            try:
                ev = self._record(path, record)
                # warcio knows where a record starts once it has read it to its end
                ev.offset = it.get_record_offset()
            except errors as e:
                what = _kept(f"the record cannot be parsed ({e})", records - 1)
                yield Reject(path, self.offset, "corrupt", what)
                return
            self.offset = ev.offset + it.get_record_length()  # where the next one starts
            yield ev
            if isinstance(ev, Reject) and ev.reason == "truncated":
                return

    def _record(self, path: str, record: Any) -> Doc | Reject | Skip:
        rtype = record.rec_type
        if rtype not in KEPT:
            record.content_stream().read()
            return Skip(path, self.offset, f"warc_{rtype}")
        headers = record.http_headers
        if headers is not None and rtype != "conversion":
            mtype, charset = _media_type(headers.get_header("Content-Type"))
        else:
            mtype, charset = _media_type(record.rec_headers.get_header("Content-Type"))
            if rtype == "conversion" and not mtype:
                mtype = "text/plain"
        declared = int(record.rec_headers.get_header("Content-Length") or 0)
        cut = False
        try:
            payload = record.content_stream().read(self.opts.max_doc_bytes + 1)
        except ChunkedDataException:  # a chunk cut short: the archive ends inside this record
            payload, cut = b"", True
        if len(payload) > self.opts.max_doc_bytes:
            record.content_stream().read()
            return Reject(
                path, self.offset, "too_large", f"payload > max_doc_bytes={self.opts.max_doc_bytes:,}"
            )
        left = record.raw_stream.limit  # what the payload's decoding did not need
        if cut or (left > 0 and len(record.raw_stream.read(left)) < left):
            return Reject(
                path,
                self.offset,
                "truncated",
                f"the {rtype} record of {declared:,} bytes is cut short (the archive ends inside it); "
                "the records before it were kept",
            )
        if not (mtype.startswith(HTML_TYPES) or mtype.startswith(TEXT_TYPES)):
            return Skip(path, self.offset, "warc_non_text")
        h = record.rec_headers
        columns = {
            "url": h.get_header("WARC-Target-URI"),
            "date": _date(h.get_header("WARC-Date")),
            "record_id": h.get_header("WARC-Record-ID"),
            "content_type": mtype,
        }
        if mtype.startswith(HTML_TYPES):
            return html_doc(path, self.offset, payload, self.opts, charset, columns)
        return self._text(path, payload, charset, columns)

    def _text(self, path: str, payload: bytes, charset: str | None, columns: dict[str, Any]) -> Doc | Reject:
        enc = codec_name(charset)
        if enc and enc != "utf-8":
            try:
                return Doc(path, self.offset, payload.decode(enc).encode("utf-8"), enc, columns)
            except UnicodeDecodeError:
                pass
        ev = TextDecoder(payload[:65536], self.opts.encoding).decode(path, self.offset, payload)
        if isinstance(ev, Doc):
            ev.columns = {**columns, **(ev.columns or {})}
        return ev


def _kept(what: str, n: int) -> str:
    return f"{what}; the {n:,} records before it were kept" if n else f"{what}; nothing was kept"


register(
    "warc",
    streamed(WarcReader, sniff_text=False),
    extensions=(".warc", ".wet", ".arc"),
    offset_unit="byte offset of the record in the decompressed archive",
    columns=("title", "url", "date", "record_id", "content_type"),
)
