"""Which split each piece of a document goes to: chunking long documents at paragraphs, and the
hash of (doc_id, chunk index) that puts each chunk in train or val.

Both depend on the text alone, never on other documents, so adding data moves nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator

# Cut points, as byte offsets: after a run of blank lines (a paragraph's end), after a newline.
# Blank means empty or ASCII whitespace only; working on bytes keeps offsets and sizes in UTF-8 bytes.
_PARAGRAPH_END = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_LINE_END = re.compile(rb"\n")


def _char_cuts(data: bytes, start: int, stop: int, limit: int) -> Iterator[int]:
    """Ends of pieces of data[start:stop] of at most `limit` bytes, never inside a UTF-8 character."""
    pos = start
    while pos < stop:
        end = min(pos + limit, stop)
        while end < stop and (data[end] & 0xC0) == 0x80:  # a continuation byte: back off
            end -= 1
        yield end
        pos = end


def _cuts(data: bytes, start: int, stop: int, limit: int, level: int = 0) -> Iterator[int]:
    """Ends of pieces of data[start:stop] of at most `limit` bytes, packed greedily from paragraphs
    (level 0); a paragraph longer than `limit` is packed from its lines, a line from its characters."""
    if level == 2:
        yield from _char_cuts(data, start, stop, limit)
        return
    pattern = _PARAGRAPH_END if level == 0 else _LINE_END
    ends = [m.end() for m in pattern.finditer(data, start, stop)]
    if not ends or ends[-1] != stop:
        ends.append(stop)
    pos = start
    while pos < stop:
        i = bisect.bisect_right(ends, pos + limit) - 1  # the furthest cut that fits
        if i >= 0 and ends[i] > pos:
            yield ends[i]
            pos = ends[i]
        else:  # the next piece alone is longer than limit: cut it one level down
            nxt = ends[bisect.bisect_right(ends, pos)]
            yield from _cuts(data, pos, nxt, limit, level + 1)
            pos = nxt


def chunks_with_sizes(text: str, chunk_bytes: int) -> list[tuple[str, int]]:
    """chunk_text's chunks, each with its UTF-8 size (encode_part needs both)."""
    data = text.encode("utf-8")
    if len(data) <= chunk_bytes:
        return [(text, len(data))] if text else []
    out, pos = [], 0
    for end in _cuts(data, 0, len(data), chunk_bytes):
        out.append((data[pos:end].decode("utf-8"), end - pos))
        pos = end
    return out


def chunk_text(text: str, chunk_bytes: int) -> list[str]:
    """Cut a document into chunks of at most `chunk_bytes` UTF-8 bytes that join back to it exactly.

    Chunks end after blank lines (paragraph ends) where possible, after a line inside a paragraph
    longer than `chunk_bytes`, and at a character boundary inside a line longer than that. The cuts
    depend on the text alone.
    """
    return [chunk for chunk, _ in chunks_with_sizes(text, chunk_bytes)]


def cut_line(line: str, limit: int) -> list[str]:
    """A line as pieces of at most `limit` UTF-8 bytes (whole characters)."""
    data = line.encode("utf-8")
    out, pos = [], 0
    for end in _char_cuts(data, 0, len(data), limit):
        out.append(data[pos:end].decode("utf-8"))
        pos = end
    return out


def hash_unit(key: str, person: bytes) -> float:
    """A uniform number in [0, 1) from a string: stable across runs, machines and Python versions."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(doc_id: str, chunk_index: int, val_fraction: float) -> str:
    """'val' or 'train' for one chunk, from a hash of (doc_id, chunk index) alone.

    A chunk's split never depends on other documents, so adding data moves nothing; raising
    `val_fraction` only moves chunks from train to val.
    """
    return "val" if hash_unit(f"{doc_id}\x00{chunk_index}", b"forja-split") < val_fraction else "train"
