"""Main-text extraction from HTML: resiliparse vs trafilatura on real pages, for speed and leftovers.

    python bench/html_extractors.py [--pages 50] [--repeat 3] [FOLDER ...]

The pages are real HTML found on the machine (by default the documentation that Debian packages,
Node and Rust install): up to `--pages`, spread evenly over the folders. Figures per extractor:

* MB/s: bytes of HTML in / seconds of extraction (the best of `--repeat` passes; parsing included);
* boilerplate left: the share of boilerplate snippets found in the output. A snippet is the text
  (20 characters or more, whitespace collapsed) of a <nav>, <header>, <footer>, <aside>, <script>,
  <style> or <noscript> element, of an element whose class or id says nav/menu/sidebar/footer/
  header/breadcrumb/cookie/toc, or of a link reading previous/next/prev/up/home;
  snippets that also occur in the page's paragraphs are not counted;
* main text kept: the share of the page's paragraphs (<p> of 40 characters or more outside those
  elements) found in the output;
* snippets that are the text of a heading outside those elements are not counted either;\n* also ingest's own reader (tasks/ingest/readers/html.py), to show what its wrapping costs.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import lxml.html

DEFAULT_FOLDERS = [
    "/usr/share/doc/nodejs",
    "/usr/share/doc/valgrind",
    "/usr/share/doc/libxslt1-dev",
    "/usr/lib/node_modules/npm/docs",
    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/book",
    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/reference",
    "/usr/share/doc/libffi8",
    "/work/main/.venv/lib",
]
BOILER_TAGS = ("nav", "header", "footer", "aside", "script", "style", "noscript")
BOILER_ATTR = re.compile(r"nav|menu|sidebar|footer|header|breadcrumb|cookie|toc\b", re.I)
PREV_NEXT = re.compile(r"^\W*(previous|prev|next|up|home)\b", re.I)
WS = re.compile(r"\s+")


def norm(s: str) -> str:
    return WS.sub(" ", s).strip()


def find_pages(folders: list[str], n: int) -> list[Path]:
    per: list[list[Path]] = []
    for f in folders:
        files = sorted(
            p
            for p in Path(f).rglob("*")
            if p.suffix in (".html", ".htm") and p.is_file() and p.stat().st_size > 5000
        )
        if files:
            per.append(files)
    if not per:
        sys.exit("no HTML pages found; name folders holding .html files")
    out: list[Path] = []
    k = max(1, -(-n // len(per)))
    for files in per:
        step = max(1, len(files) // k)
        out.extend(files[::step][:k])
    return out[:n]


def truth(html: bytes) -> tuple[list[str], list[str]]:
    """(boilerplate snippets, main paragraphs) of one page."""
    root = lxml.html.fromstring(html)
    boiler_els = [e for t in BOILER_TAGS for e in root.iter(t)]
    for e in root.iter():
        if not isinstance(e.tag, str):
            continue
        attrs = f"{e.get('class', '')} {e.get('id', '')} {e.get('role', '')}"
        if (BOILER_ATTR.search(attrs) and e.tag not in ("html", "body")) or (
            e.tag == "a" and PREV_NEXT.match(e.text_content() or "")
        ):
            boiler_els.append(e)
    inside = set()
    for e in boiler_els:
        inside.update(e.iter())
    paras = [norm(p.text_content()) for p in root.iter("p") if p not in inside]
    paras = [p for p in paras if len(p) >= 40]
    # a heading listed in a table of contents is boilerplate there, but main text as the heading
    heads = [norm(h.text_content()) for t in ["h1", "h2", "h3", "h4", "h5", "h6"] for h in root.iter(t)]
    joined = " ".join(paras + [h for h in heads if h not in inside])
    snippets = set()
    for e in boiler_els:
        for line in (e.text_content() or "").splitlines():
            s = norm(line)
            if len(s) >= 20 and s not in joined:
                snippets.add(s)
    return sorted(snippets), paras


def extractors() -> dict[str, object]:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    from tasks.ingest.readers.html import extract_html

    def resiliparse_main(b: bytes) -> str:
        return extract_plain_text(bytes_to_str(b, detect_encoding(b)), main_content=True)

    def resiliparse_all(b: bytes) -> str:
        return extract_plain_text(bytes_to_str(b, detect_encoding(b)), main_content=False)

    def trafilatura_default(b: bytes) -> str:
        return trafilatura.extract(b) or ""

    def trafilatura_fast(b: bytes) -> str:
        return trafilatura.extract(b, fast=True) or ""

    def forja_reader(b: bytes) -> str:
        return extract_html(b).text

    return {
        "resiliparse (main_content)": resiliparse_main,
        "resiliparse (all text)": resiliparse_all,
        "trafilatura (default)": trafilatura_default,
        "trafilatura (fast)": trafilatura_fast,
        "forja html reader": forja_reader,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="*", default=DEFAULT_FOLDERS)
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pages = find_pages(args.folders, args.pages)
    blobs = [p.read_bytes() for p in pages]
    mb = sum(map(len, blobs)) / 1e6
    truths = [truth(b) for b in blobs]
    n_snip = sum(len(s) for s, _ in truths)
    n_para = sum(len(p) for _, p in truths)
    print(f"{len(pages)} pages, {mb:.2f} MB of HTML")
    print(f"{n_snip} boilerplate snippets, {n_para} main paragraphs\n")
    print("| extractor | MB/s | boilerplate left | main text kept | output chars |")
    print("|---|---|---|---|---|")
    for name, fn in extractors().items():
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            outs = [fn(b) for b in blobs]
            best = min(best, time.perf_counter() - t0)
        left = kept = chars = 0
        for out, (snips, paras) in zip(outs, truths, strict=True):
            o = norm(out)
            chars += len(o)
            left += sum(s in o for s in snips)
            kept += sum(p in o for p in paras)
        print(
            f"| {name} | {mb / best:.2f} | {left / max(n_snip, 1):.1%} ({left}/{n_snip}) "
            f"| {kept / max(n_para, 1):.1%} ({kept}/{n_para}) | {chars:,} |"
        )


if __name__ == "__main__":
    main()
