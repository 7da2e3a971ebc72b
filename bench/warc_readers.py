"""Reading web archives: warcio vs fastwarc, records and payload bytes per second.

    python bench/warc_readers.py [--copies 20]

Writes a WARC (per-record gzip, as crawls ship) of the real pages bench/html_extractors.py uses,
`--copies` times over, with warcio's writer; then reads every response record's payload with each
library (the best of 3 passes), and with ingest's whole WARC reader (payload + HTML extraction).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from html_extractors import DEFAULT_FOLDERS, find_pages


def write_archive(path: Path, pages: list[bytes], copies: int) -> int:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for c in range(copies):
            for i, body in enumerate(pages):
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
                uri = f"http://example.com/{c}/{i}"
                w.write_record(
                    w.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=http)
                )
    return len(pages) * copies


def warcio_read(path: Path) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type == "response":
                n += len(rec.content_stream().read())
    return n


def fastwarc_read(path: Path) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    n = 0
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response):
            rec.http_headers  # noqa: B018 (parsed, as ingest needs them)
            n += len(rec.reader.read())
    return n


def ingest_read(path: Path) -> int:
    from tasks.ingest.readers import format_of, read_item
    from tasks.ingest.records import Doc, ReadOptions

    fmt, comp = format_of(path.name)
    item = {"kind": "file", "path": str(path), "format": fmt, "compression": comp, "source": str(path)}
    return sum(len(ev.data) for ev in read_item(item, ReadOptions()) if isinstance(ev, Doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=20)
    args = ap.parse_args()
    pages = [p.read_bytes() for p in find_pages(DEFAULT_FOLDERS, 50)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.warc.gz"
        records = write_archive(path, pages, args.copies)
        payload = sum(map(len, pages)) * args.copies
        print(
            f"{records:,} response records, {payload / 1e6:.1f} MB of payload, {path.stat().st_size / 1e6:.1f} MB gzipped\n"
        )
        print("| reader | s | records/s | payload MB/s |")
        print("|---|---|---|---|")
        for name, fn in [
            ("warcio", warcio_read),
            ("fastwarc", fastwarc_read),
            ("ingest (warcio + HTML)", ingest_read),
        ]:
            best = min(_time(fn, path) for _ in range(3 if "ingest" not in name else 1))
            print(f"| {name} | {best:.2f} | {records / best:,.0f} | {payload / 1e6 / best:.1f} |")


def _time(fn, path: Path) -> float:
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
