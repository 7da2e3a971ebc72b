"""Properties of the clean stage's text normalisation, checked with hypothesis.

`normalise` runs the per-document map rules of tasks/sql (mojibake, control_chars, nfc,
whitespace, pii) through the real DuckDB SQL, with the real Python UDFs, exactly as clean_shard
chains them. The properties hold for any text (surrogates aside: ingest stores valid UTF-8 only):

* idempotence: normalising normalised text changes nothing;
* the output is NFC, holds no control or invisible character (but tab and newline), no Unicode
  space other than U+0020, no CR, no blank space at a line end or at either end, no run of more
  than one blank line; DuckDB hands back valid UTF-8;
* mojibake (UTF-8 read as cp1252 or Latin-1) of any text is repaired back to the text, and the
  repair leaves text alone that holds none of the characters mojibake is made of;
* e-mail addresses, IPv4 and IPv6 addresses and phone numbers in any text are replaced by their
  placeholders.

Documented limits (asserted below, so a change in behaviour shows): text that contains mojibake
itself (its own "Ã©") is repaired too when mojibaked again, and "Ã" before a lower-case letter is
read as the "í" whose soft hyphen an editor dropped.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tasks.clean import CleanConfig, chain_sql, connect, fix_mojibake

# Each example is a batch of texts normalised in one query (a query costs ~30 ms, a text ~nothing).
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters the rules act on, drawn often so that hypothesis meets them together.
CONTROLS = [chr(c) for c in [*range(0, 9), 11, 12, 13, *range(14, 32), *range(0x7F, 0xA0)]]
INVISIBLE = ["\u00ad", "\u200b", "\u2060", "\ufeff", "\u200c", "\u200d"]
SPACES = ["\u00a0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u202f", "\u205f", "\u3000"]
BREAKS = ["\n", "\r", "\r\n", "\t", " ", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"]
COMBINING = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030c", "\u0327", "\u0338"]
LATIN1 = [chr(c) for c in range(0xA0, 0x100)]
CP1252_SPECIALS = list("€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ")
PII_BITS = ["@", ".", ":", "::", "+1", "(555) ", "555-", "-1234", "192.168.", "fe80", "a@b.com"]
OTHER = [*"aAeEiouSzZ<>=0123456789", "ğŸ", "Ã", "Â", "é", "ï¿½", "😀", "中文", "Ωμέγα", "Привет"]

no_surrogates = st.characters(exclude_categories=("Cs",))
parts = st.one_of(
    no_surrogates,
    st.sampled_from(CONTROLS + INVISIBLE + SPACES + BREAKS + COMBINING),
    st.sampled_from(LATIN1 + CP1252_SPECIALS + PII_BITS + OTHER),
)
texts = st.lists(parts, max_size=40).map("".join)
batches = st.lists(texts, min_size=1, max_size=25)

WS_AT_END = re.compile(r"[ \t]\n")


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    with connect(CleanConfig(), tmp_path_factory.mktemp("duckdb")) as c:
        yield c


def _run(con, texts: list[str], rule_names: tuple[str, ...] | None = None) -> list[str]:
    config = CleanConfig()
    rules = [r for r in config.enabled(("map",)) if rule_names is None or r.name in rule_names]
    n = len(texts)
    table = pa.table(
        {
            "doc_id": [str(i) for i in range(n)],
            "source": ["prop"] * n,
            "path": ["prop"] * n,
            "offset": pa.array(range(n), pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )
    con.register("prop_input", table)
    try:
        ctes, last = chain_sql(rules, 'SELECT doc_id, source, path, "offset", text FROM prop_input')
        rows = con.execute(f'{ctes} SELECT "offset", encode(text) FROM {last} ORDER BY "offset"').fetchall()
    finally:
        con.unregister("prop_input")
    return [bytes(b).decode("utf-8") for _, b in rows]  # strict: DuckDB must hand back valid UTF-8


def normalise(con, batch: list[str]) -> list[str]:
    return _run(con, batch)


# --------------------------------------------------------------------------- the whole chain


@SETTINGS
@given(batches)
@example(["Ã\u200b©"])  # removing an invisible character joins a mojibake pair
@example(["A\u0303\u00a9 caf"])  # mojibake written in NFD ("Ã" as A + combining tilde)
@example(["mail a@b.co\u0338 now", "ip 1.2.3.4\u0338"])  # a combining mark after a PII value
@example(["Â\x08¡", "×Ø".encode().decode("latin-1")])
def test_normalisation_is_idempotent_and_leaves_clean_nfc_text(con, batch):
    out = normalise(con, batch)
    # idempotent: normalising normalised text changes nothing
    assert normalise(con, out) == out
    # each document on its own: the result does not depend on the other rows or their order
    assert normalise(con, batch[::-1]) == out[::-1]
    for o in out:
        assert unicodedata.is_normalized("NFC", o), o
        bad = [c for c in o if unicodedata.category(c) == "Cc" and c not in "\t\n"]
        assert not bad, (o, bad)
        assert not set(o) & {"\u00ad", "\u200b", "\u2060", "\ufeff", "\u2028", "\u2029"}, o
        assert all(c == " " for c in o if unicodedata.category(c) == "Zs"), o
        assert "\r" not in o and "\n\n\n" not in o and not WS_AT_END.search(o), o
        assert o == o.strip(" \t\n"), o


# --------------------------------------------------------------------------- mojibake


codecs.register_error("forja-latin-1", lambda e: (e.object[e.start : e.end].decode("latin-1"), e.end))


def cp1252_mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 (the 5 bytes it leaves undefined read as Latin-1, as
    Windows does)."""
    return text.encode("utf-8").decode("cp1252", errors="forja-latin-1")


def latin1_mojibake(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


_MOJIBAKE_LIKE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
    "|ğŸ|Ã |Ã(?=[a-zà-ÿ])"
)


def mojibake_itself(con, batch: list[str]) -> list[bool]:
    """The documented limit: text that holds what mojibake is made of - a UTF-8 lead byte's
    character (Â..ô) before a continuation byte's (U+0080..U+00BF, cp1252's specials), the emoji
    lead "ğŸ", "Ã " - or "Ã" before a lower-case letter (taken for a lost "í"), as it is or once
    control_chars and nfc have run (they remove what stood between, compose "A" + U+0303 into "Ã").
    What those two rules leave is read from their own SQL, not from the repair's Python helper."""
    later = _run(con, batch, ("control_chars", "nfc"))
    return [
        bool(_MOJIBAKE_LIKE.search(t) or _MOJIBAKE_LIKE.search(t2))
        for t, t2 in zip(batch, later, strict=True)
    ]


@SETTINGS
@given(batches)
@example(["Déjà vu: naïve café in Zürich, 10 € — “quoted” 😀 中文", "Á Í Ï Ð Ý", "×Ø", "\x80"])
def test_mojibake_of_any_text_is_repaired(con, batch):
    """Á Í Ï Ð Ý: their second UTF-8 byte is one cp1252 leaves undefined; ×Ø in Latin-1 mojibake
    are "Ã" + a C1 control, which only the Latin-1 reading explains."""
    batch = [t for t, limit in zip(batch, mojibake_itself(con, batch), strict=True) if not limit]
    garbled = [garble(t) for garble in (cp1252_mojibake, latin1_mojibake) for t in batch]
    assert [fix_mojibake(g) for g in garbled] == batch * 2
    n = len(batch)
    out = normalise(con, [*garbled, *batch])
    assert out[:n] == out[2 * n :] and out[n : 2 * n] == out[2 * n :]
    # the SQL rule alone (its regular expression decides which rows reach the repair)
    assert _run(con, garbled, ("mojibake",)) == batch * 2


@SETTINGS
@given(
    st.lists(
        st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters=[chr(c) for c in range(0xC2, 0xF5)])
        ),
        max_size=30,
    )
)
def test_text_without_mojibake_letters_is_left_alone(con, batch):
    """Mojibake always starts with one of Â..ô (a UTF-8 lead byte read as cp1252/Latin-1), or is
    the emoji lead ğŸ: text without them is never touched by the repair."""
    batch = [t for t in batch if "ğŸ" not in unicodedata.normalize("NFC", t)]
    assert [fix_mojibake(t) for t in batch] == batch
    assert _run(con, batch, ("mojibake",)) == batch


def test_documented_limits_of_the_mojibake_repair():
    # mojibake of text that is itself mojibake comes back repaired twice
    assert fix_mojibake(cp1252_mojibake("cafÃ©")) == "café"
    # "Ã" before a lower-case letter is taken for an "í" whose soft hyphen was dropped
    assert fix_mojibake(cp1252_mojibake("Ãa é")) == "ía é"
    assert fix_mojibake("capÃtulo é") == "capÃtulo é"  # (only in text that had mojibake)
    assert fix_mojibake("capÃtulo Ã©") == "capítulo é"


# --------------------------------------------------------------------------- PII


def _email(local: str, domain: list[str], tld: str) -> str:
    return f"{local}@{'.'.join(domain)}.{tld}"


emails = st.builds(
    _email,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,15}", fullmatch=True),
    st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,10}", fullmatch=True), min_size=1, max_size=3),
    st.from_regex(r"[A-Za-z]{2,6}", fullmatch=True),
)
ipv4s = st.lists(st.integers(0, 255), min_size=4, max_size=4).map(lambda p: ".".join(map(str, p)))
ipv6s = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(lambda p: ":".join(f"{x:x}" for x in p))
phones = st.one_of(
    st.from_regex(r"\([2-9][0-9]{2}\) [0-9]{3}-[0-9]{4}", fullmatch=True),
    st.from_regex(r"[2-9][0-9]{2}[.-][0-9]{3}[.-][0-9]{4}", fullmatch=True),
    st.from_regex(r"\+[1-9][0-9]{1,2} [0-9]{2,4} [0-9]{3,4} [0-9]{3,4}", fullmatch=True),
)
PLACEHOLDER = {"email": "<EMAIL>", "ipv4": "<IPV4>", "ipv6": "<IPV6>", "phone": "<PHONE>"}


pii_values = st.sampled_from(sorted(PLACEHOLDER)).flatmap(
    lambda kind: st.tuples(
        st.just(kind), {"email": emails, "ipv4": ipv4s, "ipv6": ipv6s, "phone": phones}[kind]
    )
)


@SETTINGS
@given(st.lists(st.tuples(pii_values, texts, texts), min_size=1, max_size=20))
def test_pii_in_any_text_is_replaced(con, cases):
    out = normalise(con, [f"{before} {value} {after}" for (_, value), before, after in cases])
    for ((kind, value), _, _), o in zip(cases, out, strict=True):
        assert value not in o
        assert PLACEHOLDER[kind] in o
