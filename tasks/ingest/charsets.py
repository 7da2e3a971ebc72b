"""Which single-byte code page a text that is not UTF-8 is in: candidates ranked by how plausible
the text they decode to is, in some language.

charset-normalizer proposes candidates, but on short texts it ranks code pages that decode without
errors almost at random (a Polish ISO-8859-2 text comes out as ISO-8859-10 "Croatian", a French
ISO-8859-15 text as ISO-8859-10 "Estonian"), and several decode every byte. So each candidate (its
proposals plus the common code pages below) decodes the sample, and the decoded text is scored:

    plausibility = the share of its non-ASCII characters that are letters of ONE language's
                   alphabet (ALPHABETS) or common punctuation (€, «», „“, –, …), in words whose
                   case is regular (lower, UPPER or Capitalized: a code page of the wrong Cyrillic
                   family scrambles case, "сЪЕШЬ") and whose script is one (a Turkish text read as
                   cp1251 gives "Pijamalэ").

The best score wins; ties (the code pages decode the sample to the same text, or equally well)
go to the first in COMMON (cp1252 first), then to charset-normalizer's order.
`Detected.confidence` is the winner's score; below LOW_CONFIDENCE the ingest report lists the
document as a doubtful decode (manifest `encoding_doubts`, count `low_confidence_encoding`).

Limits: the score knows alphabets, not words, so a text whose only non-ASCII letter is one
that two code pages map to letters of one language (Maltese ħ read as Polish ą) can still be
decoded wrongly with full confidence; `ingest.encoding` settles such a source.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

LOW_CONFIDENCE = 0.9
SAMPLE_BYTES = 1 << 16  # what must decode without error
SCORE_CHARS = 1 << 14  # what is scored (the score costs Python time per character)

# Tried before charset-normalizer's proposals, in this order for ties (cp1252 first: the most
# common legacy encoding, a superset of Latin-1's printable range).
COMMON = [
    "cp1252", "iso8859-15", "cp1250", "iso8859-2", "cp1251", "koi8-r", "koi8-u", "iso8859-5",
    "cp866", "cp1253", "iso8859-7", "cp1254", "iso8859-9", "cp1257", "iso8859-13", "iso8859-4",
    "iso8859-3", "iso8859-10", "iso8859-16", "cp1255", "iso8859-8", "cp1256", "iso8859-6",
]  # fmt: skip

_CYR_RU = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
_LOWER = {
    "pl": "ąćęłńóśźż",
    "cs": "áčďéěíňóřšťúůýž",
    "sk": "áäčďéíĺľňóôŕšťúýž",
    "hu": "áéíóöőúüű",
    "hr": "čćđšž",
    "sl": "čšž",
    "ro": "ăâîșțşţ",
    "de": "äöüß",
    "fr": "àâæçéèêëîïôœùûüÿ",
    "es": "áéíñóúü",
    "pt": "áâãàçéêíóôõú",
    "it": "àèéìíîòóùú",
    "nordic": "åäöæøéü",
    "is": "áðéíóúýþæö",
    "et": "äöõüšž",
    "lv": "āčēģīķļņšūž",
    "lt": "ąčęėįšųūž",
    "tr": "çğıöşüâîû",
    "mt": "ċġħżàèìòù",
    "eo": "ĉĝĥĵŝŭ",
    "ru": _CYR_RU,
    "uk": "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя",
    "be": "абвгдеёжзійклмнопрстуўфхцчшыьэюя",
    "bg": "абвгдежзийклмнопрстуфхцчшщъьюя",
    "sr": "абвгдђежзијклљмнњопрстћуфхцчџш",
    "mk": "абвгдѓежзѕијклљмнњопрсќтуфхцчџш",
    "el": "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώϊϋΐΰς",
    "he": "אבגדהוזחטיכךלמםנןסעפףצץקרשת",
    "ar": "ءآأؤإئابةتثجحخدذرزسشصضطظعغفقكلمنهوىي",
}
ALPHABETS = {lang: frozenset(s + s.upper() + ("İ" if lang == "tr" else "")) for lang, s in _LOWER.items()}
PUNCT = frozenset("\u00a0–—‘’‚“”„•…€«»°§©®·№\u200e\u200f،؛؟")
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True, slots=True)
class Detected:
    encoding: str
    confidence: float  # the decoded text's plausibility, 0..1
    language: str | None  # the alphabet that explains it best (None: pure ASCII)


def plausibility(text: str) -> tuple[float, str | None]:
    """(score, language) of a decoded text: see the module doc. Pure ASCII scores 1.0."""
    odd = 0
    chars: dict[str, int] = {}
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        regular = (
            word.islower()
            or word.isupper()
            or (word[0].isupper() and word[1:].islower())
            or word.lower() == word.upper()  # a script without case (Hebrew, Arabic)
        )
        if regular and any(ch >= "\u0370" for ch in word) and any(ch.isascii() for ch in word):
            regular = False  # Latin letters and Greek/Cyrillic/Hebrew/Arabic ones in one word
        for ch in word:
            if ch > "\x7f":
                if regular:
                    chars[ch] = chars.get(ch, 0) + 1
                else:
                    odd += 1
    others = sum(1 for ch in text if ch > "\x7f" and not ch.isalpha())
    punct = sum(1 for ch in text if ch in PUNCT)
    total = odd + sum(chars.values()) + others
    if total == 0:
        return 1.0, None
    best, lang = -1, None
    for name, alphabet in ALPHABETS.items():
        good = sum(n for ch, n in chars.items() if ch in alphabet)
        if good > best:
            best, lang = good, name
    return (best + punct) / total, lang


def detect_single_byte(sample: bytes | bytearray, proposals: list[str] = ()) -> Detected | None:
    """The most plausible single-byte code page of `sample` (not UTF-8), or None if none decodes it."""
    sample = bytes(sample[:SAMPLE_BYTES])
    order: list[str] = []
    for enc in [*COMMON, *proposals]:
        try:
            name = codecs.lookup(enc).name
        except LookupError:
            continue
        if name not in order and name not in ("utf-8", "ascii") and not name.startswith(("utf-", "mac")):
            order.append(name)
    best: Detected | None = None
    seen: dict[str, Detected] = {}
    for enc in order:
        try:
            text = sample.decode(enc)
        except UnicodeDecodeError:
            continue
        if text in seen:  # the same text as an earlier (preferred) code page: an exact tie
            continue
        score, lang = plausibility(text[:SCORE_CHARS])
        seen[text] = d = Detected(enc, round(score, 4), lang)
        if best is None or d.confidence > best.confidence:
            best = d
            if d.confidence >= 1.0:  # nothing later can beat it, and ties go to the first
                break
    return best
