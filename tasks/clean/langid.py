"""Language identification for the `language` rule (065_language.sql): CLD2 through pycld2.

    language_of_arrow(texts) -> per text STRUCT(lang VARCHAR, score DOUBLE)   (the Arrow UDF)
    language_of(texts)       -> the same as Python dicts (tests, notebooks)

Why CLD2 (pycld2): its model is compiled into the package (14 MB, nothing is downloaded at run
time), and it is fast enough to run on every document of every clean. Measured with
`python bench/langid.py` (bench/README.md) on real sentences in 12 languages: pycld2 got 96.7% of
single sentences, 91.7% of short phrases and 100% of five-sentence documents right, at about
70,000 documents/s (27 MB/s) on one core; lingua (high accuracy) got 100% / 100% / 100% but at
850 documents/s (0.66 MB/s) on two cores, 80 times slower, which would make language ID most of
the clean stage's time; gcld3 does not build here (no wheel for this Python, needs protoc).
CLD2's misses were all "unknown", never a wrong language: a text it cannot tell is `und`, which
an allow-list keeps only when it names `und`.

`lang` is CLD2's language code (ISO 639-1 where there is one: en, fr, de, ...; `und` when CLD2
finds no reliable language, e.g. code, numbers or a few words); `score` is the share of the
text (0..1) that CLD2 put in that language. Only the first MAX_CHARS characters are read: a
document's language shows long before that, and a huge document costs no more than a page.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pycld2

UNDETERMINED = "und"
MAX_CHARS = 16_384
LANG_TYPE = "STRUCT(lang VARCHAR, score DOUBLE)"
# CLD2 rejects C0/C1 controls and lone surrogates as "invalid UTF-8" (clean removes most before)
_REJECTED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_LEGACY_CODES = {"iw": "he", "jw": "jv", "in": "id"}  # CLD2's old ISO 639 codes


def _detect(text: str) -> tuple[str, float]:
    text = text[:MAX_CHARS]
    try:
        reliable, _, details = pycld2.detect(text, isPlainText=True)
    except pycld2.error:
        try:
            reliable, _, details = pycld2.detect(_REJECTED.sub(" ", text), isPlainText=True)
        except pycld2.error:
            return UNDETERMINED, 0.0
    code, percent = details[0][1], details[0][2]
    if not reliable or code in ("un", "xxx"):
        return UNDETERMINED, 0.0
    return _LEGACY_CODES.get(code, code), percent / 100.0


def language_of_arrow(texts: pa.Array | pa.ChunkedArray) -> pa.StructArray:
    """The Arrow UDF: one (lang, score) per text; a NULL text gives a NULL struct."""
    values = texts.to_pylist()
    langs: list[str | None] = []
    scores: list[float | None] = []
    for t in values:
        lang, score = (None, None) if t is None else _detect(t)
        langs.append(lang)
        scores.append(score)
    mask = pa.array([t is None for t in values], pa.bool_())
    return pa.StructArray.from_arrays(
        [pa.array(langs, pa.string()), pa.array(scores, pa.float64())], names=["lang", "score"], mask=mask
    )


def language_of(texts: list[str]) -> list[dict[str, object]]:
    """(lang, score) of some texts, as dicts."""
    return language_of_arrow(pa.array(texts, pa.string())).to_pylist()
