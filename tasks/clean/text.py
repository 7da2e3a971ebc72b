"""The Python functions the rule SQL calls on text: mojibake repair and the quality statistics.

    fix_mojibake(text)          -> text with UTF-8-read-as-cp1252/Latin-1 undone (010_mojibake.sql)
    text_stats_arrow(texts)     -> per text the STATS_FIELDS counts, as an Arrow struct (070_quality.sql)
    text_stats(texts)           -> the same as Python dicts (tests, notebooks, threshold tuning)

fix_mojibake is a scalar UDF that the SQL calls only on rows a regular expression flags;
text_stats is an Arrow UDF vectorised over a batch with numpy (no Python loop per document).
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata

import ftfy
import ftfy.bad_codecs  # registers the "sloppy-windows-1252" codec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.clean.arrays import ascii_space, np_values, utf8_buffers

# --------------------------------------------------------------------------- mojibake (ftfy UDF)

_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)
_CP1252_CONT = (
    "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
# A UTF-8 lead byte read as cp1252 (Â..ô) and its continuation bytes read as cp1252: the same
# test as 010_mojibake.sql, as a run, so that a whole multi-byte sequence is re-decoded at once.
_RUN = re.compile(f"[\u00c2-\u00f4][{_CP1252_CONT}]+")
# What is left for ftfy: a run that did not re-decode, the emoji lead "ğŸ" (F0 9F read as
# cp1254/Latin-5), or "Ã " ("à" whose no-break space became a space): ftfy's heuristics decide.
_LEFT = re.compile(f"[\u00c2-\u00f4][{_CP1252_CONT}]|ğŸ|Ã ")
# "í" is C3 AD in UTF-8; read as cp1252 that is "Ã" + a soft hyphen, which editors and browsers
# drop, leaving "capÃtulo". In a document that had mojibake, "Ã" before a lower-case letter can
# only be that.
_LOST_I = re.compile("Ã(?=[a-zà-ÿ])")


# What 020_control_chars.sql and 030_nfc.sql do to a text, mirrored here so that fix_mojibake can
# see mojibake those rules would reveal: "Ã" + zero-width space + "©" (the removal joins the
# pair), or "Ã" written as "A" + U+0303 (NFD; NFC composes it). Without this, a second cleaning
# of cleaned text would still repair something. tests/reliability/test_normalisation_properties.py
# checks that cleaning is idempotent, which keeps this in step with the SQL.
_CTRL_NEWLINE = re.compile("[\x0b\x0c\x85\u2028\u2029]")
_CTRL_REMOVE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]")
_CTRL_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_MOJIBAKE_ROUNDS = 4  # repairs of repairs: double mojibake, or mojibake the later rules reveal


def _c1_as_bytes(e: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler: a C1 control (U+0080..U+009F) is the byte a Latin-1 reading made
    it from, so Latin-1 mojibake re-decodes like cp1252 mojibake (without ftfy's guesses)."""
    bad = e.object[e.start : e.end]  # type: ignore[attr-defined]
    if isinstance(e, UnicodeEncodeError) and all("\x80" <= c <= "\x9f" for c in bad):
        return bad.encode("latin-1"), e.end
    raise e


codecs.register_error("forja-c1-as-bytes", _c1_as_bytes)


def _redecode(m: re.Match[str]) -> str:
    s = m.group()
    try:
        return s.encode("sloppy-windows-1252", errors="forja-c1-as-bytes").decode("utf-8")
    except UnicodeError:
        return s


def _repair(text: str) -> str:
    """One round: re-decode each suspicious run, then ftfy on the lines still suspicious."""
    fixed = _RUN.sub(_redecode, text)
    if _LEFT.search(fixed):
        fixed = "".join(
            ftfy.fix_text(line, _FTFY) if _LEFT.search(line) else line
            for line in fixed.splitlines(keepends=True)
        )
    return fixed


def _as_later_rules_leave_it(text: str) -> str:
    """The text after control_chars and nfc (020, 030)."""
    text = _CTRL_SPACE.sub(" ", _CTRL_REMOVE.sub("", _CTRL_NEWLINE.sub("\n", text)))
    return unicodedata.normalize("NFC", text)


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 read as cp1252/Latin-1, fast: re-decode each suspicious run (regex + codec, about
    20x faster than ftfy); hand the lines still suspicious to ftfy (slow, thorough); then restore
    "í" whose second byte was lost. Text without a repairable sequence comes back unchanged.

    Repeats until nothing changes (a few rounds at most), and also repairs the mojibake that the
    next rules would reveal (see _as_later_rules_leave_it), so that the clean rules are idempotent.
    """
    fixed = text
    for _ in range(_MOJIBAKE_ROUNDS):
        again = _repair(fixed)
        if again == fixed:
            seen = _as_later_rules_leave_it(fixed)
            if seen == fixed or (again := _repair(seen)) == seen:
                break
        fixed = again
    if fixed == text:
        return text
    return _LOST_I.sub("í", fixed)


# --------------------------------------------------------------------------- text_stats (numpy UDF)

STATS_FIELDS = (
    "n_chars",  # code points
    "n_space",  # ASCII whitespace characters
    "n_alpha",  # letters (str.isalpha)
    "n_words",  # runs of non-whitespace
    "n_hash",  # '#'
    "n_ellipsis",  # runs of 3+ dots, and '…'
    "n_lines",  # non-empty lines
    "n_punct_lines",  # non-empty lines whose last character is punctuation
    "line_bytes",  # bytes of the non-empty lines (without newlines)
    "dup_line_bytes",  # bytes of the lines that repeat an earlier line of the same document
)
STATS_TYPE = "STRUCT(" + ", ".join(f"{f} BIGINT" for f in STATS_FIELDS) + ")"
STATS_BATCH_BYTES = 16 << 20  # bounds the numpy temporaries of one call (a few times this)
# Po characters that are symbols rather than the end of a phrase
_NOT_END_PUNCT = set("#%&*@\\/§¶†‡•‣‰‱′″‴※⁂·¡¿")


@functools.lru_cache(maxsize=1)
def _unicode_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per BMP code point: is it a letter; does it end a phrase (Pe, Pf, or Po that is not a symbol)."""
    alpha = np.zeros(0x10000, dtype=bool)
    punct = np.zeros(0x10000, dtype=bool)
    for c in range(0x10000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        alpha[c] = ch.isalpha()
        cat = unicodedata.category(ch)
        punct[c] = cat in ("Pe", "Pf") or (cat == "Po" and ch not in _NOT_END_PUNCT)
    return alpha, punct


def _code_points(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Code points of the UTF-8 characters that start at byte positions `pos`."""
    b0 = data[pos].astype(np.int64)
    b1 = np.take(data, pos + 1, mode="clip").astype(np.int64) & 0x3F
    b2 = np.take(data, pos + 2, mode="clip").astype(np.int64) & 0x3F
    b3 = np.take(data, pos + 3, mode="clip").astype(np.int64) & 0x3F
    return np.select(
        [b0 < 0x80, b0 < 0xE0, b0 < 0xF0],
        [b0, ((b0 & 0x1F) << 6) | b1, ((b0 & 0x0F) << 12) | (b1 << 6) | b2],
        ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3,
    )


def _seg_count(mask: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """Per document: how many bytes of `mask` are set (one `np.add.reduceat`, no index arrays)."""
    n = len(offs) - 1
    if mask.size == 0:
        return np.zeros(n, dtype=np.int64)
    acc = np.int32 if mask.size < 2**31 else np.int64
    counts = np.add.reduceat(mask.view(np.uint8), np.minimum(offs[:-1], mask.size - 1), dtype=acc)
    counts[offs[1:] == offs[:-1]] = 0  # reduceat gives an empty segment its first element
    return counts.astype(np.int64)


def _text_stats(data: np.ndarray, offs: np.ndarray) -> dict[str, np.ndarray]:
    """The STATS_FIELDS of every document, from its UTF-8 bytes, with no Python loop per document.

    Byte classes are numpy comparisons counted per document with `reduceat`; only the non-ASCII
    characters (usually few) are decoded to code points for the Unicode letter and punctuation
    tables; repeated lines are found by dictionary-encoding every line (Arrow's hash table).
    Lines are compared as they are (the whitespace rule has already cut trailing blanks).
    """
    n = len(offs) - 1
    nb = np.diff(offs)
    if len(data) == 0:
        return dict.fromkeys(STATS_FIELDS, np.zeros(n, dtype=np.int64))
    alpha_tab, punct_tab = _unicode_tables()

    def per_doc(pos: np.ndarray) -> np.ndarray:  # sparse positions -> counts per document
        return np.diff(np.searchsorted(pos, offs))

    space = ascii_space(data)
    n_space = _seg_count(space, offs)
    ascii_other = ~space & (((data | np.uint8(0x20)) - np.uint8(97)) >= np.uint8(26))  # and non-ASCII
    if int(data.max()) < 0x80:  # all ASCII: a byte is a character
        n_chars = nb
        n_alpha = nb - n_space - _seg_count(ascii_other, offs)
        lead = cp = np.zeros(0, dtype=np.int64)
    else:
        n_chars = nb - _seg_count((data & np.uint8(0xC0)) == np.uint8(0x80), offs)
        lead = np.flatnonzero(data >= 0xC0)
        cp = _code_points(data, lead)
        lead_alpha = np.where(cp < 0x10000, alpha_tab[np.minimum(cp, 0xFFFF)], cp >= 0x20000)  # CJK ext.
        ascii_other &= data < 0x80
        n_alpha = n_chars - n_space - _seg_count(ascii_other, offs) - per_doc(lead[~lead_alpha])

    first = ~space
    first[1:] &= space[:-1]
    doc_starts = offs[:-1][nb > 0]
    first[doc_starts] = ~space[doc_starts]  # a word never continues across documents
    n_words = _seg_count(first, offs)

    n_hash = _seg_count(data == 35, offs)
    dots = np.flatnonzero(data == 46)
    ell = np.zeros(0, dtype=np.int64)
    if len(dots) >= 3:
        run3 = (dots[2:] - dots[:-2]) == 2
        after_dot = np.concatenate([[False], (dots[1:] - dots[:-1]) == 1])[:-2]
        ell = dots[:-2][run3 & ~after_dot]
    n_ellipsis = per_doc(ell) + per_doc(lead[cp == 0x2026])

    # Lines: a copy of the bytes with a '\n' after every document, so that every line ends in
    # one; document d's last '\n' is at offs[d + 1] + d.
    buf = np.insert(data, offs[1:], np.uint8(10))
    nl = np.flatnonzero(buf == 10)
    lstart = np.concatenate([[0], nl[:-1] + 1])
    llen = nl - lstart
    ldoc = np.searchsorted(offs[1:] + np.arange(n), nl, side="left")
    ne = llen > 0
    last = nl[ne] - 1
    for _ in range(3):  # step back from a continuation byte to its lead byte
        last -= (buf[last] & np.uint8(0xC0)) == np.uint8(0x80)
    lcp = _code_points(buf, last)
    punct = (lcp < 0x10000) & punct_tab[np.minimum(lcp, 0xFFFF)]
    nd = ldoc[ne]
    n_lines = np.bincount(nd, minlength=n)
    n_punct_lines = np.bincount(nd[punct], minlength=n)
    line_bytes = np.bincount(nd, weights=llen[ne], minlength=n).astype(np.int64)

    # Repeated lines: every line (with its '\n') as one element of an Arrow string array over
    # `buf`, dictionary-encoded (Arrow's hash table): equal (document, line) keys are repeats.
    bounds = np.concatenate([[0], nl + 1])
    otype, stype = (np.int32, pa.string()) if bounds[-1] < 2**31 else (np.int64, pa.large_string())
    lines = pa.Array.from_buffers(
        stype, len(nl), [None, pa.py_buffer(bounds.astype(otype)), pa.py_buffer(buf)]
    )
    line_id = np_values(pc.dictionary_encode(lines).indices)[ne]
    nv = int(line_id.max()) + 1 if len(line_id) else 1
    order = np.argsort(nd.astype(np.int64) * nv + line_id, kind="stable")
    key = nd[order].astype(np.int64) * nv + line_id[order]
    rep = np.flatnonzero(key[1:] == key[:-1]) + 1
    dup_line_bytes = np.bincount(nd[order][rep], weights=llen[ne][order][rep], minlength=n).astype(np.int64)

    return {
        "n_chars": n_chars,
        "n_space": n_space,
        "n_alpha": n_alpha,
        "n_words": n_words,
        "n_hash": n_hash,
        "n_ellipsis": n_ellipsis,
        "n_lines": n_lines,
        "n_punct_lines": n_punct_lines,
        "line_bytes": line_bytes,
        "dup_line_bytes": dup_line_bytes,
    }


def text_stats_arrow(arr: pa.Array | pa.ChunkedArray) -> pa.StructArray:
    """`text_stats` as an Arrow UDF: one struct of STATS_FIELDS per text (NULL reads as '')."""
    data, offs = utf8_buffers(arr)
    n = len(offs) - 1
    parts: list[dict[str, np.ndarray]] = []
    i = 0
    while i < n:  # groups of documents of about STATS_BATCH_BYTES (one larger document alone)
        j = int(np.searchsorted(offs, offs[i] + STATS_BATCH_BYTES, side="right")) - 1
        j = min(max(j, i + 1), n)
        parts.append(_text_stats(data[offs[i] : offs[j]], offs[i : j + 1] - offs[i]))
        i = j
    cols = [
        pa.array(np.concatenate([p[f] for p in parts]) if parts else np.zeros(0, np.int64), pa.int64())
        for f in STATS_FIELDS
    ]
    return pa.StructArray.from_arrays(cols, names=list(STATS_FIELDS))


def text_stats(texts: list[str]) -> list[dict[str, int]]:
    """The quality counts of some texts (for tests, notebooks and threshold tuning)."""
    s = text_stats_arrow(pa.array(texts, pa.string()))
    return s.to_pylist()
