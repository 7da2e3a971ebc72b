"""A corpus holding every kind of bad input, and what ingest must make of each item.

`build_bad_corpus(folder)` writes real files (a real PNG, real truncated gzip and zstd streams, a
real symbolic-link loop, a file nobody may read, ...) and returns an `Expected`: every document
ingest must store (relative path, offset, text), how many repeats it must count as duplicates, and
every quarantine row (relative path, offset, reason). The expectations come from how the files
were written, never from running ingest, so a test comparing the two can fail.

Files are read with `split=blank_line` (the setting of the flow tests' FAST runs): a document is
a run of lines between blank lines, its offset the byte offset where it starts (in the
decompressed stream for .gz / .zst). JSONL offsets are 1-based line numbers.

`drop_dac_privileges` is the `preexec_fn` that makes "a file nobody may read" unreadable even
when the tests run as root: the child keeps uid 0 (so it can still write the Forja home, the
output folders and the MLflow store it owns) but loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH,
the capabilities that let root ignore permission bits.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

# A 1x1 PNG, header and IHDR chunk: binary by signature, without a NUL in its first bytes
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
BIG_LINE_BYTES = 10 * 1024 * 1024
SEP = "\n\n"
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass
class Expected:
    """What ingest must report for the corpus: paths are relative to the corpus folder."""

    root: Path
    candidates: list[tuple[str, int, str]] = field(default_factory=list)  # every document read, in walk order
    quarantine: list[tuple[str, int, str]] = field(default_factory=list)  # (path, offset, reason)
    legacy: set[str] = field(default_factory=set)  # texts that were decoded from a legacy encoding
    unreadable: list[Path] = field(default_factory=list)  # chmod 000: restore before removing

    def doc(self, path: str, offset: int, text: str) -> None:
        self.candidates.append((path, offset, text))

    def reject(self, path: str, offset: int, reason: str) -> None:
        self.quarantine.append((path, offset, reason))

    @property
    def accepted(self) -> list[tuple[str, int, str]]:
        """The first occurrence of every text, in the order a folder walk reads the files."""
        seen, out = set(), []
        for path, offset, text in sorted(self.candidates, key=lambda c: (Path(c[0]).parts, c[1])):
            if text not in seen:
                seen.add(text)
                out.append((path, offset, text))
        return out

    @property
    def duplicates(self) -> int:
        return len(self.candidates) - len(self.accepted)

    @property
    def items(self) -> int:
        return len(self.candidates) + len(self.quarantine)

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r for _, _, r in self.quarantine).items()))

    def restore_permissions(self) -> None:
        for p in self.unreadable:
            if p.exists() or p.is_symlink():
                p.chmod(0o700)


def paragraphs(text: str) -> list[str]:
    """`text` cut into documents the way ingest's blank_line split cuts it."""
    return [p.strip("\n") for p in _BLANK_LINE.split(text.replace("\r", "")) if p.strip()]


def _write_docs(exp: Expected, rel: str, docs: list[str], encoding: str = "utf-8") -> bytes:
    """docs joined by blank lines, recorded as candidates at their byte offsets; returns the bytes."""
    raw, offset = b"", 0
    for i, d in enumerate(docs):
        exp.doc(rel, offset, d)
        chunk = d.encode(encoding) + (SEP if i + 1 < len(docs) else "\n").encode()
        raw += chunk
        offset += len(chunk)
    return raw


def _words(rng: random.Random, n: int) -> str:
    vocab = [
        "river",
        "stone",
        "lantern",
        "harbour",
        "quiet",
        "measure",
        "window",
        "garden",
        "letter",
        "engine",
        "morning",
        "copper",
        "signal",
        "bridge",
        "winter",
        "thread",
    ]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _truncated_stream(exp: Expected, rel: str, kind: str, rng: random.Random) -> bytes:
    """A compressed stream of some short documents, a flush, then one long document cut in half.

    The flush puts every short document (and the blank line after the last one) in a complete
    block, so a reader must keep exactly those; the cut falls in the middle of the long
    document's blocks, so the reject starts where the long document does.
    """
    short = [f"{kind} document {i}: " + _words(rng, 12) + "." for i in range(4)]
    head = "".join(d + SEP for d in short).encode()
    long_doc = "\n".join(_words(rng, 14) + "." for _ in range(6000))  # ~500 KB, no blank line
    offset = 0
    for d in short:
        exp.doc(rel, offset, d)
        offset += len(d.encode()) + len(SEP)
    exp.reject(rel, offset, "truncated")
    if kind == "gzip":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
            g.write(head)
            g.flush(zlib.Z_FULL_FLUSH)
            flushed = buf.tell()
            g.write(long_doc.encode() + b"\n")
        data = buf.getvalue()
    else:
        c = zstandard.ZstdCompressor(level=3).compressobj()
        first = c.compress(head) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        flushed = len(first)
        data = first + c.compress(long_doc.encode() + b"\n") + c.flush()
    return data[: flushed + (len(data) - flushed) // 2]


def build_bad_corpus(folder: Path, good_text: str | None = None, seed: int = 0) -> Expected:
    """Write the bad-input corpus under `folder` (created); return what ingest must make of it.

    `good_text` (optional) is added as three files of blank-line paragraphs under good/, for a
    corpus a model can be trained on; its repeated paragraphs count as duplicates.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    exp = Expected(folder)

    def put(rel: str, data: bytes) -> Path:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    # ordinary documents, one of them repeated in another file
    ok = [
        "The ferry left the harbour at dawn, and the gulls followed it out.",
        "A second paragraph, about lanterns and copper wire.",
        "Déjà vu: naïve café owners in Zürich count in ¥, € and £.",
    ]
    put("ok.txt", _write_docs(exp, "ok.txt", ok))
    put("repeat.txt", _write_docs(exp, "repeat.txt", [ok[1], "Something new in the repeat file."]))

    # invalid UTF-8: a lone 0xFF byte (never valid in UTF-8) in one document of a UTF-8 file
    docs = [
        "Première partie, tout va bien ici.".encode(),
        "Ça coûte très cher, dit-il ".encode() + b"\xff" + " déjà.".encode(),
        "Troisième.".encode(),
    ]
    raw = b""
    for i, d in enumerate(docs):
        if i == 1:
            exp.reject("damaged-utf8.txt", len(raw), "undecodable")
        else:
            exp.doc("damaged-utf8.txt", len(raw), d.decode())
        raw += d + (b"\n\n" if i + 1 < len(docs) else b"\n")
    put("damaged-utf8.txt", raw)

    # a legacy encoding is not bad input: it is decoded and flagged
    # (detection needs a few sentences: a single short Latin-1 sentence can come out as cp1257)
    latin = (
        "Le café était déjà fermé quand nous sommes arrivés. Les élèves, très déçus, ont dû rentrer "
        "à pied sous la pluie. Où est la bibliothèque ? Ça ne fait rien, nous reviendrons demain."
    )
    put("latin1.txt", _write_docs(exp, "latin1.txt", [latin], encoding="latin-1"))
    exp.legacy.add(latin)

    # binary: a PNG, and a text file with NUL bytes in it
    put("image.png", PNG)
    exp.reject("image.png", 0, "binary")
    put("nul.txt", b"some text\x00\x00 then NUL bytes\n\nmore text\n")
    exp.reject("nul.txt", 0, "binary")

    # empty: zero bytes, and only whitespace
    put("empty.txt", b"")
    exp.reject("empty.txt", 0, "empty")
    put("blank.txt", b"  \n\n\t\n   \n")
    exp.reject("blank.txt", 0, "empty")

    # a 10 MB single line: one document, stored whole
    line = _words(rng, 200) + " "
    big = (line * (BIG_LINE_BYTES // len(line) + 1))[:BIG_LINE_BYTES].strip()
    put("big-line.txt", big.encode())
    exp.doc("big-line.txt", 0, big)

    # truncated .gz and .zst: the documents before the break are kept
    put("cut.txt.gz", _truncated_stream(exp, "cut.txt.gz", "gzip", rng))
    put("cut.txt.zst", _truncated_stream(exp, "cut.txt.zst", "zstd", rng))

    # a JSONL with one bad line (line 3)
    rows = [{"text": "first json row"}, {"text": "second json row"}, None, {"text": "fourth json row"}]
    lines = []
    for n, row in enumerate(rows, 1):
        if row is None:
            lines.append('{"text": "an unterminated string')
            exp.reject("rows.jsonl", n, "bad_json")
        else:
            lines.append(json.dumps(row))
            exp.doc("rows.jsonl", n, row["text"])
    put("rows.jsonl", ("\n".join(lines) + "\n").encode())

    # symbolic links: one to itself, one to a folder above it, one to nothing
    (folder / "loop.txt").symlink_to("loop.txt")
    exp.reject("loop.txt", 0, "symlink_loop")
    (folder / "sub").mkdir()
    put("sub/inside.txt", _write_docs(exp, "sub/inside.txt", ["A document in a sub-folder."]))
    (folder / "sub" / "up").symlink_to("..")
    exp.reject("sub/up", 0, "symlink_loop")
    (folder / "dangling.txt").symlink_to("does-not-exist.txt")
    exp.reject("dangling.txt", 0, "broken_symlink")

    # unreadable: a file and a folder nobody may read (see drop_dac_privileges for root)
    secret = put("secret.txt", b"you cannot read this\n")
    secret.chmod(0)
    exp.reject("secret.txt", 0, "unreadable")
    locked = folder / "locked"
    put("locked/inner.txt", b"nor this\n")
    locked.chmod(0)
    exp.reject("locked", 0, "unreadable")
    exp.unreadable += [secret, locked]

    if good_text is not None:
        paras = paragraphs(good_text)
        step = len(paras) // 3
        for i in range(3):
            rel = f"good/part{i}.txt"
            put(rel, _write_docs(exp, rel, paras[i * step : (i + 1) * step]))
    return exp


# --------------------------------------------------------------------------- privileges

from support import drop_dac_privileges  # noqa: E402, F401 (re-exported for the tests here)
