"""HTML pages (.html, .htm): one document per page, its main text, with the page's title as a column.

The main text comes from resiliparse's extractor (`extract_plain_text(main_content=True)`):
navigation, scripts, styles, headers, footers, asides, "previous/next" links and cookie banners
are left out (bench/html_extractors.py measures it against trafilatura; bench/README.md says why).

The charset, first that applies: a byte-order mark; the HTTP header's charset (web archives pass
it); the page's `<meta charset>` or `<meta http-equiv="Content-Type" content="...; charset=...">`
in its first 4 KiB; valid UTF-8; the `encoding` override (ReadOptions.encoding); detection
(tasks.ingest.decode.detect_legacy). A declared charset that does not decode the page strictly
is passed over. The `encoding` column says which charset was used.

`extract_html` is the whole function on bytes; the web-archive reader (warc.py) calls it too.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from tasks.ingest.decode import NON_SPACE, detect_legacy
from tasks.ingest.readers.registry import register
from tasks.ingest.readers.stream import chunks, streamed
from tasks.ingest.records import Doc, ReadOptions, Reject

META_BYTES = 4096  # where a <meta charset> must be (the HTML standard says the first 1024 bytes)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_BOMS = [
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]
# What the WHATWG encoding standard maps these labels to: a page labelled Latin-1 or ASCII is
# decoded as windows-1252, as browsers do (the labels are wrong more often than not).
# Left out besides what resiliparse's main-content rules drop: navigation panels and cookie
# banners by their usual class, id and role names (DocBook, Texinfo, Sphinx, common banners), and a page-level <header>/<footer>.
SKIP = [
    "body > header",
    "body > footer",
    "body > div > header",
    "body > div > footer",
    "[role=navigation]",
    "[role=banner]",
    "[role=contentinfo]",
    '[class*="cookie"]',
    '[id*="cookie"]',
    '[class*="consent"]',
    ".navheader",
    ".navfooter",
    ".nav-panel",
    "div.header",
    ".related",
    ".breadcrumb",
    ".breadcrumbs",
]
_WHATWG = {"latin1": "cp1252", "iso8859-1": "cp1252", "ascii": "cp1252", "iso8859-9": "cp1254"}


@dataclass(slots=True)
class Extracted:
    text: str
    title: str | None
    encoding: str
    confidence: float | None = None  # set when the charset was detected, not declared


def codec_name(label: str | None) -> str | None:
    """The Python codec for a charset label ('ISO-8859-2', 'utf8', 'x-foo' -> None), WHATWG-mapped."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return _WHATWG.get(name, name)


def meta_charset(data: bytes | bytearray) -> str | None:
    """The charset a page declares in a <meta> tag near its start, as a codec name, or None."""
    m = _META_CHARSET.search(bytes(data[:META_BYTES]))
    return codec_name(m.group(1).decode("ascii")) if m else None


def decode_html(
    data: bytes | bytearray, http_charset: str | None = None, override: str | None = None
) -> tuple[str, str, float | None] | None:
    """(text, encoding, confidence when detected) of a page's bytes (order: the module doc), or None."""
    data = bytes(data)
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(enc), enc, None
            except UnicodeDecodeError:
                break
    tried: list[str] = []
    for enc in (codec_name(http_charset), meta_charset(data), "utf-8", override):
        if not enc or enc in tried:
            continue
        tried.append(enc)
        try:
            return data.decode(enc), enc, None
        except UnicodeDecodeError:
            continue
    det = detect_legacy(data)
    if det and det.encoding not in tried:
        try:
            return data.decode(det.encoding), det.encoding, det.confidence
        except UnicodeDecodeError:
            pass
    return None


def extract_html(
    data: bytes | bytearray, http_charset: str | None = None, override: str | None = None
) -> Extracted:
    """The main text and title of an HTML page (raises UnicodeError when no charset decodes it)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    decoded = decode_html(data, http_charset, override)
    if decoded is None:
        raise UnicodeError("no charset decodes the page (declared, UTF-8 or detected)")
    text, enc, confidence = decoded
    tree = HTMLTree.parse(text)
    title = " ".join((tree.title or "").split()) or None
    body = extract_plain_text(tree, main_content=True, alt_texts=False, skip_elements=SKIP)
    return Extracted(body, title, enc, confidence)


def html_doc(
    path: str,
    offset: int,
    data: bytes | bytearray,
    opts: ReadOptions,
    http_charset: str | None = None,
    columns: dict[str, Any] | None = None,
) -> Doc | Reject:
    """One page as a Doc (text, title and `columns`), or why not."""
    try:
        ex = extract_html(data, http_charset, opts.encoding)
    except UnicodeError as e:
        return Reject(path, offset, "undecodable", f"HTML page: {e}; set ingest.encoding")
    if not NON_SPACE.search(ex.text.encode("utf-8", "surrogatepass")):
        return Reject(path, offset, "empty", "the HTML page holds no main text")
    if "\x00" in ex.text:
        return Reject(path, offset, "binary", "the HTML page's text holds a NUL character")
    try:
        out = ex.text.encode("utf-8")
    except UnicodeEncodeError as e:
        return Reject(path, offset, "undecodable", f"the page's text holds a lone surrogate ({e.reason})")
    cols = {**(columns or {}), "title": ex.title}
    if ex.confidence is not None:
        cols["encoding_confidence"] = ex.confidence
    return Doc(path, offset, out, ex.encoding, cols)


class HtmlReader:
    """A page per file, read whole (up to max_doc_bytes)."""

    def __init__(self, opts: ReadOptions):
        self.opts = opts

    @property
    def pending_offset(self) -> int:
        return 0

    def read(self, item: dict[str, Any], head: bytes, stream: BinaryIO) -> Iterator[Doc | Reject]:
        buf, size = bytearray(), 0
        for chunk in chunks(head, stream, self.opts.chunk_bytes):
            size += len(chunk)
            if size <= self.opts.max_doc_bytes:
                buf += chunk
        if size > self.opts.max_doc_bytes:
            yield Reject(
                item["path"],
                0,
                "too_large",
                f"{size:,} bytes > max_doc_bytes={self.opts.max_doc_bytes:,}; raise it",
            )
            return
        yield html_doc(item["path"], 0, buf, self.opts)


register(
    "html",
    streamed(HtmlReader),
    extensions=(".html", ".htm", ".xhtml"),
    offset_unit="always 0: a page is one document",
    columns=("title",),
)
