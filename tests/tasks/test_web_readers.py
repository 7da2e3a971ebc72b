"""HTML pages and web archives through ingest: real files written here (the archives by warcio's
WARC writer), read by `run_ingest` and by the `forja ingest` command.

Checked: the main text without navigation, header, footer, scripts, styles, cookie banner and
previous/next links; the title, URL, date, record id and media type columns; the charset from the
page's <meta>, from the HTTP header and from `encoding`; the counts of skipped record kinds; a
file cut mid-record quarantined at that record's offset with every record before it kept; and
that parts of text-only shards keep the base schema (the pinned digests depend on it).
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import ROOT, child_env
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.ingest import DATA_SCHEMA, IngestConfig, run_ingest

RIVERS = [
    "The Danube flows through ten countries, more than any other river, from the Black Forest to the Black Sea.",
    "The Rhine rises in the Swiss Alps and reaches the North Sea in the Netherlands after 1,230 kilometres.",
]
POLISH = "Zażółć gęślą jaźń. W Krakowie nad Wisłą stoi Wawel, a obok niego smok wawelski zionie ogniem."
RUSSIAN = "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва стоит на реке Москве."
GREEK = "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και ο Παρθενώνας βρίσκεται στην Ακρόπολη."
# What the extractor must leave out (each is in the page below, outside its article).
BOILERPLATE = [
    "SCRIPT-MARKER",
    "style-marker",
    "We use cookies",
    "Example Travel Site Home",
    "All rivers of the world",
    "Previous: Lakes of Asia",
    "Next: Mountains of Africa",
    "All rights reserved",
]


def page(title: str, paragraphs: list[str], head: str = '<meta charset="utf-8">') -> str:
    ps = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return f"""<!doctype html><html><head>{head}<title>{title}</title>
<style>body {{ color: #333 }} .style-marker {{ display: none }}</style>
<script>var marker = "SCRIPT-MARKER";</script></head>
<body>
<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies</div>
<header><a href="/">Example Travel Site Home</a> <a href="/about">About our travel writers</a></header>
<nav><ul><li><a href="/rivers">All rivers of the world</a></li><li><a href="/l">All lakes</a></li></ul></nav>
<main><article><h1>{title}</h1>
{ps}
</article>
<div class="pagination"><a href="/p1">&laquo; Previous: Lakes of Asia</a>
<a href="/p3">Next: Mountains of Africa &raquo;</a></div>
</main>
<footer>Copyright 2026 Example Travel Ltd. All rights reserved. Privacy policy.</footer>
</body></html>
"""


def rows(out: Path) -> list[dict]:
    """Every stored document, by (path, offset)."""
    tables = [pq.read_table(out / o["path"]).to_pylist() for o in _manifest(out)["outputs"]]
    return sorted((r for t in tables for r in t), key=lambda r: (r["path"], r["offset"]))


def quarantine(out: Path) -> list[dict]:
    q = _manifest(out)["quarantine"]["outputs"]
    return [r for o in q for r in pq.read_table(out / o["path"]).to_pylist()]


def _manifest(out: Path) -> dict:
    import json

    return json.loads((out / "manifest.json").read_text())


def assert_clean(text: str) -> None:
    for junk in BOILERPLATE:
        assert junk not in text, (junk, text)


def test_html_pages_main_text_title_and_charsets(tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    (src / "rivers.html").write_text(page("Rivers of Europe", RIVERS), encoding="utf-8")
    (src / "krakow.htm").write_bytes(
        page("Kraków", [POLISH], '<meta charset="windows-1250">').encode("cp1250")
    )
    head = '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-7">'
    (src / "athens.html").write_bytes(page("Αθήνα", [GREEK], head).encode("iso8859-7"))
    (src / "notes.txt").write_text("A plain text note beside the pages.\n", encoding="utf-8")
    m = run_ingest([str(src)], tmp_path / "out")

    got = {Path(r["path"]).name: r for r in rows(tmp_path / "out")}
    assert set(got) == {"rivers.html", "krakow.htm", "athens.html", "notes.txt"}
    rivers = got["rivers.html"]
    assert rivers["text"].startswith("Rivers of Europe\n\n")
    for p in RIVERS:
        assert p in rivers["text"]
    assert_clean(rivers["text"])
    assert (rivers["title"], rivers["encoding"]) == ("Rivers of Europe", "utf-8")
    assert POLISH in got["krakow.htm"]["text"]
    assert (got["krakow.htm"]["title"], got["krakow.htm"]["encoding"]) == ("Kraków", "cp1250")
    assert GREEK in got["athens.html"]["text"]
    assert (got["athens.html"]["title"], got["athens.html"]["encoding"]) == ("Αθήνα", "iso8859-7")
    assert got["notes.txt"]["title"] is None  # a text file in the same part: no title
    assert m["counts"]["run"]["accepted"] == 4 and m["counts"]["run"]["quarantined"] == 0
    assert "title" in pq.read_schema(tmp_path / "out" / m["outputs"][0]["path"]).names


def test_text_only_shards_keep_the_base_schema(tmp_path):
    (tmp_path / "a.txt").write_text("Just text, nothing else.\n")
    m = run_ingest([str(tmp_path / "a.txt")], tmp_path / "out")
    assert pq.read_schema(tmp_path / "out" / m["outputs"][0]["path"]).names == DATA_SCHEMA.names


def _chunked(body: bytes, size: int = 64) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def _http(ctype: str, *extra: tuple[str, str]) -> StatusAndHeaders:
    return StatusAndHeaders("200 OK", [("Content-Type", ctype), *extra], protocol="HTTP/1.1")


def write_warc(path: Path, gzip_records: bool) -> None:
    """warcinfo, request, a chunked UTF-8 HTML response, an ISO-8859-2 page whose charset only the
    HTTP header names, a metadata record, a PNG response, a text/plain resource."""
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=gzip_records)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "forja tests"}))
        req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
        w.write_record(w.create_warc_record("http://example.com/", "request", http_headers=req))
        body = page("Rivers of Europe", RIVERS).encode()
        http = _http("text/html; charset=utf-8", ("Transfer-Encoding", "chunked"))
        w.write_record(
            w.create_warc_record(
                "http://example.com/rivers", "response", payload=io.BytesIO(_chunked(body)), http_headers=http
            )
        )
        body = page("Kraków", [POLISH], head="").encode("iso8859-2")
        http = _http('text/html; charset="ISO-8859-2"')
        w.write_record(
            w.create_warc_record(
                "http://example.pl/", "response", payload=io.BytesIO(body), http_headers=http
            )
        )
        w.write_record(
            w.create_warc_record(
                "http://example.com/rivers",
                "metadata",
                payload=io.BytesIO(b"fetchTimeMs: 12\r\n"),
                warc_content_type="application/warc-fields",
            )
        )
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
        w.write_record(
            w.create_warc_record(
                "http://example.com/a.png",
                "response",
                payload=io.BytesIO(png),
                http_headers=_http("image/png"),
            )
        )
        w.write_record(
            w.create_warc_record(
                "http://example.com/notes.txt",
                "resource",
                payload=io.BytesIO(RUSSIAN.encode("koi8-r")),
                warc_content_type="text/plain; charset=koi8-r",
            )
        )


def record_offsets(path: Path) -> list[tuple[str, int]]:
    """(type, offset) of each record, by warcio, in the decompressed archive."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    it = ArchiveIterator(io.BytesIO(raw))
    out = []
    for rec in it:
        rtype = rec.rec_type
        out.append((rtype, it.get_record_offset()))
    return out


@pytest.mark.parametrize("gzip_records", [True, False], ids=["warc.gz", "warc"])
def test_warc_records_columns_and_skips(tmp_path, gzip_records):
    name = "crawl.warc.gz" if gzip_records else "crawl.warc"
    write_warc(tmp_path / name, gzip_records)
    m = run_ingest([str(tmp_path / name)], tmp_path / "out")

    offsets = record_offsets(tmp_path / name)
    got = rows(tmp_path / "out")
    assert [r["offset"] for r in got] == [offsets[2][1], offsets[3][1], offsets[6][1]]
    rivers, krakow, notes = got
    for p in RIVERS:
        assert p in rivers["text"]
    assert_clean(rivers["text"])
    assert (rivers["url"], rivers["title"], rivers["content_type"]) == (
        "http://example.com/rivers",
        "Rivers of Europe",
        "text/html",
    )
    assert rivers["record_id"].startswith("<urn:uuid:")
    assert abs(rivers["date"] - datetime.now(UTC)).total_seconds() < 3600
    assert POLISH in krakow["text"] and krakow["encoding"] == "iso8859-2" and krakow["title"] == "Kraków"
    assert (notes["text"], notes["encoding"], notes["title"]) == (RUSSIAN, "koi8-r", None)
    run = m["counts"]["run"]
    assert run["accepted"] == 3 and run["quarantined"] == 0
    skipped = {k: v for k, v in run.items() if k.startswith("skipped_warc")}
    assert skipped == {
        "skipped_warc_warcinfo": 1,
        "skipped_warc_request": 1,
        "skipped_warc_metadata": 1,
        "skipped_warc_non_text": 1,
    }


def test_wet_conversion_records_are_kept(tmp_path):
    path = tmp_path / "crawl.wet.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "forja tests"}))
        for url, text in [("http://example.com/", RIVERS[0]), ("http://example.gr/", GREEK)]:
            rec = w.create_warc_record(
                url, "conversion", payload=io.BytesIO(text.encode()), warc_content_type="text/plain"
            )
            w.write_record(rec)
    run_ingest([str(path)], tmp_path / "out")
    got = rows(tmp_path / "out")
    assert [(r["url"], r["text"], r["content_type"]) for r in got] == [
        ("http://example.com/", RIVERS[0], "text/plain"),
        ("http://example.gr/", GREEK, "text/plain"),
    ]


@pytest.mark.parametrize("gzip_records", [True, False], ids=["warc.gz", "warc"])
def test_archive_cut_mid_record(tmp_path, gzip_records):
    """The file ends inside the ISO-8859-2 response: the chunked page before it is kept, the cut
    record is quarantined at its own offset."""
    full = tmp_path / "full.warc"
    write_warc(full, gzip_records=False)
    offsets = record_offsets(full)
    cut_at = offsets[3][1] + 400  # inside the fourth record (the ISO-8859-2 page)
    data = full.read_bytes()[:cut_at]
    name = "cut.warc.gz" if gzip_records else "cut.warc"
    (tmp_path / name).write_bytes(gzip.compress(data) if gzip_records else data)
    m = run_ingest([str(tmp_path / name)], tmp_path / "out", IngestConfig(max_reject_ratio=1.0))

    got = rows(tmp_path / "out")
    assert [r["url"] for r in got] == ["http://example.com/rivers"]
    (q,) = quarantine(tmp_path / "out")
    assert (q["reason"], q["offset"]) == ("truncated", offsets[3][1])
    assert "kept" in q["detail"]
    assert m["counts"]["run"]["skipped_warc_request"] == 1


def test_arc_archive(tmp_path):
    """An ARC (version 1) file written by hand: its filedesc record is skipped, its page kept."""
    body = page("Rivers of Europe", RIVERS).encode()
    http = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + body
    desc = b"1 0 Forja\nURL IP-address Archive-date Content-type Archive-length\n"
    arc = b"filedesc://test.arc 0.0.0.0 20240102030405 text/plain %d\n" % len(desc) + desc + b"\n"
    arc += b"http://example.com/rivers 127.0.0.1 20240102030405 text/html %d\n" % len(http) + http + b"\n"
    (tmp_path / "old.arc").write_bytes(arc)
    m = run_ingest([str(tmp_path / "old.arc")], tmp_path / "out")
    (r,) = rows(tmp_path / "out")
    assert r["url"] == "http://example.com/rivers" and r["title"] == "Rivers of Europe"
    assert r["date"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert RIVERS[1] in r["text"]
    assert m["counts"]["run"]["skipped_warc_warcinfo"] == 1


def forja(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forja.cli", *args],
        env={**child_env(), "FORJA_HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_forja_ingest_mixed_folder_with_encoding_override(tmp_path):
    """`forja ingest` on pages, an archive and a cp1251 text without a declaration; with
    `--set encoding=cp1251` the text comes out right; a wrong name is a one-line error."""
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "rivers.html").write_text(page("Rivers of Europe", RIVERS[::-1]), encoding="utf-8")
    write_warc(src / "crawl.warc.gz", gzip_records=True)
    moscow, volga = RUSSIAN.split(". ")
    (src / "moscow.txt").write_bytes(moscow.encode("cp1251"))
    (src / "volga.html").write_bytes(f"<html><body><p>{volga}</p></body></html>".encode("cp1251"))
    r = forja("ingest", "mixed", "--out", "out", "--set", "encoding=cp1251", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {(Path(x["path"]).name, x["offset"]): x for x in rows(tmp_path / "out")}
    assert len(got) == 6, sorted(got)  # 1 page + 3 archive records + 2 cp1251 files
    assert (got[("moscow.txt", 0)]["text"], got[("moscow.txt", 0)]["encoding"]) == (moscow, "cp1251")
    assert got[("volga.html", 0)]["text"] == volga and got[("volga.html", 0)]["encoding"] == "cp1251"
    m = _manifest(tmp_path / "out")
    assert m["config"]["encoding"] == "cp1251"
    assert m["counts"]["run"]["skipped_warc_request"] == 1

    bad = forja("ingest", "mixed", "--out", "out2", "--set", "encoding=latin-9x", cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "encoding" in last and "latin-9x" in last, last


def test_encoding_is_in_the_cache_key_and_left_out_when_unset(tmp_path):
    (tmp_path / "pl.txt").write_bytes(POLISH.encode("iso8859-2"))
    a = run_ingest([str(tmp_path / "pl.txt")], tmp_path / "a", IngestConfig(encoding="ISO-8859-2"))
    b = run_ingest([str(tmp_path / "pl.txt")], tmp_path / "b")
    assert a["config"]["encoding"] == "iso8859-2" and "encoding" not in b["config"]
    assert a["digest"] != b["digest"]
    assert rows(tmp_path / "a")[0]["text"] == POLISH
    assert pa.types.is_string(pq.read_schema(tmp_path / "a" / a["outputs"][0]["path"]).field("text").type)
