"""Clean: the ingest stage's Parquet -> cleaned, deduplicated Parquet, with a report of every rule.

    input_parts(in_dir, config)                       -> the ingest data parts (checked)
    clean_shard(part_path, work_dir, config)          -> per-document rules on one part (map this)
    dedup_shards(shard_results, work_dir, config)     -> exact + near dedup over all parts
    finalize(shard_results, dedup_result, out, config, upstream) -> parts, report, manifest
    run_clean(in_dir, out, config)                    -> the four, in sequence

Rules are SQL files in tasks/sql/, one rule each, applied in the order of their number prefix:

    010_mojibake  020_control_chars  030_nfc  040_whitespace  050_pii     (kind: map, rewrite text)
    060_length  070_quality                                                (kind: filter, drop rows)
    080_exact_dedup  090_near_dedup                                       (whole corpus)

A map rule is `SELECT * REPLACE (<expr> AS text) FROM input`; a filter rule adds a `reason`
column (NULL keeps the row). Thresholds reach the SQL as DuckDB variables (`getvariable('...')`)
set from `CleanConfig`; `rules` switches any rule off. The per-document rules of one part run as
ONE streaming DuckDB query (each rule a CTE over the previous one) that writes the part's work
file; nothing is materialised between rules. Where SQL is slow or cannot do it, Python UDFs help:
mojibake repair (only on rows a regular expression flags), numpy character-class counts for the
quality heuristics (`text_stats`, vectorised over a batch), numpy MinHash signatures
(tasks/dedup.py). DuckDB runs Python UDFs one call at a time, so a shard uses about one core;
shards run in parallel (an orchestrator mapping clean_shard, or `workers` in run_clean).

Output folder OUT:

    part-00000.parquet ...  doc_id, source, path, offset, text (cleaned), n_bytes (of the cleaned
                            text), ordered by (doc_id, source, path, offset); zstd, 8192-row groups
    dropped.parquet         every dropped row: doc_id, source, path, offset, rule, reason, dup_of,
                            similarity, n_bytes (the text stays in the ingest output)
    report.json             the cleaning report (below)
    manifest.json           stage "clean", upstream = the ingest digest, outputs = the parts,
                            artifacts = report.json + dropped.parquet, counts, and the report

report.json: rows_in, rows_out, bytes_in, bytes_out, and `rules`, one entry per rule that ran, in
order: rule, kind, file, description, rows_in, rows_out; a map rule adds `changed` and examples
{doc key, before, after} (snippets around the first change, invisible characters spelled out as
⟨U+XXXX⟩; the PII rule shows no `before`); a filter or dedup rule adds `dropped`, `reasons`
{reason: rows} and examples {doc key, reason, text} (dedup: also dup_of, similarity, kept_text).
Examples are the first ones in (doc_id, source, path, offset) order, whatever the sharding.

The same input and config give byte-identical parts, dropped.parquet and report.json: every
ordering is explicit, and no timestamp or run id goes into them. The manifest's config and digest
leave out the engine settings (threads, memory_limit, workers), which never change the output.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import ftfy
import ftfy.bad_codecs  # registers the "sloppy-windows-1252" codec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lm.errors import DataError
from lm.fileio import TMP_PREFIX, atomic_path, atomic_write_json, fsync_dir
from lm.fileio import sha256_json as _sha256_json
from tasks import dedup
from tasks.common import (
    MANIFEST,
    ROW_GROUP_ROWS,
    Progress,
    StageError,
    make_manifest,
    output_record,
    read_manifest,
    verify_outputs,
    write_manifest,
    write_parquet,
)

log = logging.getLogger("forja.clean")

STAGE = "clean"
MiB = 1 << 20
SQL_DIR = Path(__file__).with_name("sql")
REQUIRED_COLUMNS = ("doc_id", "source", "path", "offset", "text")
OUT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("offset", pa.int64()),
        ("text", pa.string()),
        ("n_bytes", pa.int64()),
    ]
)
DROPPED_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("offset", pa.int64()),
        ("rule", pa.string()),
        ("reason", pa.string()),
        ("dup_of", pa.string()),
        ("similarity", pa.float64()),
        ("n_bytes", pa.int64()),
    ]
)
KEY_ORDER = 'doc_id, source, path, "offset"'
ENGINE_FIELDS = {"threads", "memory_limit", "workers"}  # change speed and memory, never the output
PII_TYPES = ("email", "ipv4", "ipv6", "phone")
SNIPPET_CHARS = 200
PAIR_BATCH = 65536  # candidate pairs compared per numpy batch (2 x 512 B of signature each)
# The exact-dedup key (see 080_exact_dedup.sql): md5 of the cleaned text, lower-cased.
NORM_KEY_SQL = "md5_number(lower(text))"


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One rule file: `NNN_<name>.sql`, whose first line says `-- kind: map|filter|corpus|candidates`."""

    name: str
    kind: str
    path: Path
    sql: str
    description: str
    variables: tuple[str, ...]


_RULE_FILE = re.compile(r"^(\d+)_([a-z][a-z0-9_]*)\.sql$")
_KIND_LINE = re.compile(r"^--\s*kind:\s*(map|filter|corpus|candidates)\s*$")
_VARIABLE = re.compile(r"getvariable\('([a-z_][a-z0-9_]*)'\)")
PER_DOC_KINDS = ("map", "filter")


@functools.lru_cache(maxsize=4)
def load_rules(sql_dir: Path = SQL_DIR) -> tuple[Rule, ...]:
    """Every rule file of `sql_dir`, in the order of its number prefix."""
    rules = []
    for path in sorted(sql_dir.glob("*.sql"), key=lambda p: (int(p.name.split("_")[0]), p.name)):
        m = _RULE_FILE.match(path.name)
        if not m:
            raise StageError(f"{path}: rule files are named NNN_<name>.sql (e.g. 020_nfc.sql)")
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        kind = _KIND_LINE.match(lines[0]) if lines else None
        if not kind:
            raise StageError(
                f"{path}: the first line must be '-- kind: map', 'filter', 'corpus' or 'candidates'"
            )
        comments = []
        for line in lines[1:]:
            if not line.startswith("--"):
                break
            comments.append(line[2:].strip())
        # the first sentence ("et al. 2021" does not end one: the next sentence starts upper-case)
        description = re.split(r"\.\s+(?=[A-Z])", " ".join(comments))[0].rstrip(".") + "."
        body = "\n".join(line for line in lines if not line.lstrip().startswith("--")).strip().rstrip(";")
        rules.append(
            Rule(
                name=m.group(2),
                kind=kind.group(1),
                path=path,
                sql=body,
                description=description,
                variables=tuple(sorted(set(_VARIABLE.findall(body)))),
            )
        )
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise StageError(f"{sql_dir}: two rule files share a name: {names}")
    return tuple(rules)


def rule_names() -> list[str]:
    return [r.name for r in load_rules()]


# --------------------------------------------------------------------------- config


class CleanConfig(BaseModel):
    """Which rules run, their thresholds, and the engine's limits."""

    model_config = ConfigDict(extra="forbid")

    rules: dict[str, bool] = Field(
        default_factory=dict,
        description="Switch rules on or off by name: mojibake, control_chars, nfc, whitespace, pii, "
        "length, quality, exact_dedup, near_dedup. Rules not named here stay on.",
    )
    min_chars: int = Field(1, ge=1, description="length: drop documents shorter than this (characters).")
    max_chars: int | None = Field(
        None, ge=1, description="length: drop documents longer than this (characters); none: no bound."
    )
    min_alpha_share: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="quality: drop documents where letters are less than this share of the non-space characters.",
    )
    min_mean_word_len: float = Field(
        2.0, ge=0.0, description="quality: drop documents whose mean word length (characters) is below this."
    )
    max_mean_word_len: float = Field(
        15.0, gt=0.0, description="quality: drop documents whose mean word length (characters) is above this."
    )
    quality_min_words: int = Field(
        10,
        ge=0,
        description="quality: the word-length and symbol checks apply to documents of at least this many "
        "words (the means of a few words are noise: 'a + b', 'Implements ThreadPoolExecutor.').",
    )
    max_symbol_word_ratio: float = Field(
        0.1, ge=0.0, description="quality: drop documents with more '#' and ellipses per word than this."
    )
    max_dup_line_share: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="quality: drop documents where lines repeated inside the document make up more than "
        "this share of the line bytes.",
    )
    min_punct_line_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="quality: drop documents of at least `punct_min_lines` lines where fewer than this share "
        "of the lines end in punctuation (low by default: verse ends most lines without it).",
    )
    punct_min_lines: int = Field(
        5,
        ge=1,
        description="quality: the punctuation check applies to documents of at least this many lines.",
    )
    pii_types: list[Literal["email", "ipv4", "ipv6", "phone"]] = Field(
        default_factory=lambda: list(PII_TYPES),
        description="pii: the kinds of personal data replaced by typed placeholders (<EMAIL>, <IPV4>, ...).",
    )
    near_dedup_threshold: float = Field(
        0.8,
        gt=0.0,
        lt=1.0,
        description="near_dedup: documents whose estimated Jaccard similarity of word shingles reaches "
        "this are near-duplicates; the first one (by doc_id) is kept.",
    )
    num_perm: int = Field(
        128, ge=16, le=1024, description="near_dedup: MinHash signature length (more: more precise, slower)."
    )
    shingle_words: int = Field(
        5, ge=1, le=32, description="near_dedup: words per shingle; shorter documents skip near-dedup."
    )
    part_bytes: int = Field(
        64 * MiB, ge=1, description="Start a new output part after this many bytes of text."
    )
    examples_per_rule: int = Field(
        3, ge=0, le=100, description="The report shows this many examples per rule (and per drop reason)."
    )
    verify_input: bool = Field(
        True, description="Check every input part against the sha256 in the ingest manifest before cleaning."
    )
    memory_limit: str = Field(
        "2GB", description="DuckDB memory limit (it spills to disk beyond it), e.g. '2GB'."
    )
    threads: int | None = Field(
        None, ge=1, le=512, description="DuckDB worker threads per query; none: one per CPU core."
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="run_clean: clean this many parts at once, each in its own process (1: one after "
        "another in this process). DuckDB runs Python UDFs one at a time, so processes are what "
        "uses several cores; an orchestrator that maps clean_shard itself leaves this at 1.",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: dict[str, bool]) -> dict[str, bool]:
        known = rule_names()
        unknown = sorted(set(v) - set(known))
        if unknown:
            raise ValueError(f"rules: unknown rule(s) {unknown}; the rules are {known}")
        return v

    @field_validator("pii_types")
    @classmethod
    def _unique_pii(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=PII_TYPES.index)

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", v, re.IGNORECASE):
            raise ValueError(f"memory_limit must be a size such as '512MB' or '2GB'; got {v!r}")
        return v.strip()

    @model_validator(mode="after")
    def _bounds(self) -> CleanConfig:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars})")
        if self.max_mean_word_len <= self.min_mean_word_len:
            raise ValueError(
                f"max_mean_word_len ({self.max_mean_word_len}) must exceed "
                f"min_mean_word_len ({self.min_mean_word_len})"
            )
        if self.is_on("near_dedup"):
            try:
                dedup.lsh_params(self.near_dedup_threshold, self.num_perm)
            except ValueError as e:
                raise ValueError(
                    f"near_dedup_threshold {self.near_dedup_threshold} with num_perm {self.num_perm}: {e}; "
                    "lower the threshold or raise num_perm"
                ) from e
        return self

    def is_on(self, rule: str) -> bool:
        return self.rules.get(rule, True)

    def enabled(self, kinds: tuple[str, ...] = PER_DOC_KINDS) -> list[Rule]:
        return [r for r in load_rules() if r.kind in kinds and self.is_on(r.name)]

    def sql_variables(self) -> dict[str, Any]:
        """The values the rule files read with getvariable('name')."""
        return {
            "min_chars": int(self.min_chars),
            "max_chars": int(self.max_chars if self.max_chars is not None else 2**62),
            "min_alpha_share": float(self.min_alpha_share),
            "min_mean_word_len": float(self.min_mean_word_len),
            "max_mean_word_len": float(self.max_mean_word_len),
            "quality_min_words": int(self.quality_min_words),
            "max_symbol_word_ratio": float(self.max_symbol_word_ratio),
            "max_dup_line_share": float(self.max_dup_line_share),
            "min_punct_line_share": float(self.min_punct_line_share),
            "punct_min_lines": int(self.punct_min_lines),
            **{f"pii_{t}": t in self.pii_types for t in PII_TYPES},
        }

    def identity(self) -> dict[str, Any]:
        """The config as recorded in the manifest: everything that can change the output."""
        return self.model_dump(mode="json", exclude=ENGINE_FIELDS)


def _as_config(config: CleanConfig | dict[str, Any] | None) -> CleanConfig:
    if config is None:
        return CleanConfig()
    return config if isinstance(config, CleanConfig) else CleanConfig.model_validate(config)


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
STATS_BATCH_BYTES = 16 * MiB  # bounds the numpy temporaries of one call (a few times this)
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

    space = dedup.ascii_space(data)
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
    line_id = dedup.np_values(pc.dictionary_encode(lines).indices)[ne]
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
    data, offs = dedup.utf8_buffers(arr)
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


# --------------------------------------------------------------------------- DuckDB


def _lit(s: str | os.PathLike) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def _list_lit(paths: list[str]) -> str:
    return "[" + ", ".join(_lit(p) for p in paths) + "]"


@contextlib.contextmanager
def connect(
    config: CleanConfig, work_dir: str | os.PathLike, ordered: bool = True
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with the engine limits, the rules' variables and the Python UDFs.

    It spills to a folder of its own under `work_dir` (shards cleaned at once by threads of one
    process never share one), removed with the connection. `ordered=False` lets DuckDB write
    unordered results in parallel (the per-shard work files). Results that must keep their ORDER
    BY are fetched with `con.sql(...)`: with insertion order off, DuckDB 2.0's DB-API path
    (`con.execute(...).to_arrow_table()`) loses the order.
    """
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix="duckdb-spill-", dir=work_dir))
    con = duckdb.connect()
    try:
        _configure(con, config, spill, ordered)
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _configure(con: duckdb.DuckDBPyConnection, config: CleanConfig, spill: Path, ordered: bool) -> None:
    con.execute(f"SET memory_limit = {_lit(config.memory_limit)}")
    con.execute(f"SET temp_directory = {_lit(spill)}")
    if not ordered:
        con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    if config.threads:
        con.execute(f"SET threads = {int(config.threads)}")
    for name, value in config.sql_variables().items():
        con.execute(f"SET VARIABLE {name} = ?", [value])
    con.create_function("fix_mojibake", fix_mojibake, ["VARCHAR"], "VARCHAR", side_effects=False)
    con.create_function(
        "text_stats", text_stats_arrow, ["VARCHAR"], con.type(STATS_TYPE), type="arrow", side_effects=False
    )
    if config.is_on("near_dedup"):
        con.create_function(
            "minhash",
            dedup.minhash_udf(config.num_perm, config.shingle_words, config.near_dedup_threshold),
            ["VARCHAR"],
            con.type(dedup.MINHASH_TYPE),
            type="arrow",
            null_handling="special",  # too short for one shingle: NULL
            side_effects=False,
        )


def _check_variables(rules: list[Rule], config: CleanConfig) -> None:
    known = config.sql_variables()
    for r in rules:
        missing = [v for v in r.variables if v not in known]
        if missing:
            raise StageError(f"{r.path}: reads unknown variable(s) {missing}; known: {sorted(known)}")


def over_input(input_sql: str, rule: Rule) -> str:
    """A rule's query with `input` bound to `input_sql` (rule files may hold their own WITH)."""
    return f"WITH input AS ({input_sql}) SELECT * FROM (\n{rule.sql}\n)"


def chain_sql(rules: list[Rule], source_sql: str, trace: bool = False) -> tuple[str, str]:
    """The CTEs that apply `rules` in order to `source_sql`, and the name of the last one.

    Columns carried along: the input's doc_id, source, path, offset, text; `_bytes_in`; `_drop`
    (the first filter that dropped the row) and `_reason`; one `"_changed_<rule>"` flag per map
    rule. With `trace`, each map rule also keeps `"_before_<rule>"` and `"_after_<rule>"`.
    A dropped row still flows through the later rules (they are cheap), but it is counted and
    changed by none of them.
    """
    ctes = [
        f"s0 AS (SELECT *, strlen(text)::BIGINT AS _bytes_in, NULL::VARCHAR AS _drop, "
        f"NULL::VARCHAR AS _reason FROM ({source_sql}))"
    ]
    prev = "s0"
    for i, r in enumerate(rules, 1):
        if r.kind == "map":
            ctes.append(f"s{i}_in AS (SELECT *, text AS _prev FROM {prev})")
            ctes.append(f"s{i}_out AS ({over_input(f'SELECT * FROM s{i}_in', r)})")
            keep = f', _prev AS "_before_{r.name}", text AS "_after_{r.name}"' if trace else ""
            ctes.append(
                f's{i} AS (SELECT * EXCLUDE (_prev), (_drop IS NULL AND text IS DISTINCT FROM _prev) AS "_changed_{r.name}"{keep} '
                f"FROM s{i}_out)"
            )
        elif r.kind == "filter":
            ctes.append(f"s{i}_out AS ({over_input(f'SELECT * FROM {prev}', r)})")
            ctes.append(
                f"s{i} AS (SELECT * EXCLUDE (reason) REPLACE ("
                f"CASE WHEN _drop IS NULL AND reason IS NOT NULL THEN {_lit(r.name)} ELSE _drop END AS _drop, "
                f"CASE WHEN _drop IS NULL THEN reason ELSE _reason END AS _reason) FROM s{i}_out)"
            )
        else:  # pragma: no cover - enabled() only passes per-document kinds
            raise StageError(f"{r.path}: kind {r.kind!r} is not a per-document rule")
        prev = f"s{i}"
    return "WITH " + ",\n".join(ctes), prev


def _validate_chain(con: duckdb.DuckDBPyConnection, rules: list[Rule]) -> None:
    """Bind the chain on an empty input, rule by rule, so that a broken rule file is named."""
    empty = (
        "SELECT NULL::VARCHAR AS doc_id, NULL::VARCHAR AS source, NULL::VARCHAR AS path, "
        'NULL::BIGINT AS "offset", NULL::VARCHAR AS text WHERE false'
    )
    for k in range(1, len(rules) + 1):
        ctes, last = chain_sql(rules[:k], empty)
        try:
            cols = [d[0] for d in con.execute(f"{ctes} SELECT * FROM {last} LIMIT 0").description]
        except duckdb.Error as e:
            raise StageError(f"{rules[k - 1].path}: the rule does not run: {e}") from e
        want = {"doc_id", "source", "path", "offset", "text", "_bytes_in", "_drop", "_reason"}
        if not want <= set(cols):
            raise StageError(
                f"{rules[k - 1].path}: a {rules[k - 1].kind} rule must keep every input column "
                f"(SELECT * ...); missing {sorted(want - set(cols))}"
            )


# --------------------------------------------------------------------------- input


def input_parts(in_dir: str | os.PathLike, config: CleanConfig | dict[str, Any] | None = None) -> list[Path]:
    """The data parts listed in the ingest manifest of `in_dir`, checked (exists, columns, sha256)."""
    config = _as_config(config)
    in_dir = Path(in_dir)
    manifest = read_manifest(in_dir, "ingest")
    outs = [o for o in manifest.get("outputs", []) if str(o.get("path", "")).endswith(".parquet")]
    outs = [o for o in outs if not str(o["path"]).startswith("quarantine/")]
    if config.verify_input:
        verify_outputs(in_dir, {"outputs": outs})
    parts = []
    for o in sorted(outs, key=lambda o: o["path"]):
        p = in_dir / o["path"]
        if not p.is_file():
            raise DataError(f"{p} is listed in {in_dir / MANIFEST} but missing; re-run `forja ingest`")
        _check_schema(p)
        parts.append(p)
    return parts


def _check_schema(part: Path) -> None:
    try:
        schema = pq.read_schema(part)
    except Exception as e:
        raise DataError(f"{part}: not a readable Parquet file ({e}); re-run `forja ingest`") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(
            f"{part}: missing column(s) {missing}; clean needs {list(REQUIRED_COLUMNS)} "
            "(the ingest stage's output)"
        )
    if not pa.types.is_string(schema.field("text").type) and not pa.types.is_large_string(
        schema.field("text").type
    ):
        raise DataError(f"{part}: column 'text' is {schema.field('text').type}, expected a string column")


def _source_sql(part: Path) -> str:
    """The part's rows; a missing text reads as '' (dropped as 'empty'), a missing doc_id is
    recomputed from the text (the ingest contract: sha256 of the UTF-8 text)."""
    return (
        "SELECT coalesce(doc_id, sha256(coalesce(text, ''))) AS doc_id, source, path, "
        f'"offset"::BIGINT AS "offset", coalesce(text, \'\') AS text FROM read_parquet({_lit(part)})'
    )


# --------------------------------------------------------------------------- per shard


def clean_shard(
    part_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    config: CleanConfig | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply the per-document rules to one input part.

    Writes `work_dir/shards/<part>.parquet`: every input row with its cleaned text, `_drop` and
    `_reason`, the `_changed_<rule>` flags, and the dedup keys (`norm_key`, `mh`) of the rows
    kept. Returns a small dict: paths, row and byte counts, and per rule its counts and examples.
    """
    config = _as_config(config)
    part = Path(part_path)
    work_dir = Path(work_dir)
    _check_schema(part)
    rules = config.enabled()
    _check_variables(rules, config)
    shard_dir = work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    work_file = shard_dir / f"{part.parent.name}-{part.stem}.parquet"
    t0 = time.perf_counter()
    with connect(config, work_dir, ordered=False) as con:
        _validate_chain(con, rules)
        ctes, last = chain_sql(rules, _source_sql(part))
        changed = [f'"_changed_{r.name}"' for r in rules if r.kind == "map"]
        norm_key = NORM_KEY_SQL if config.is_on("exact_dedup") else "NULL::UHUGEINT"
        mh = "minhash(text)" if config.is_on("near_dedup") else f"NULL::{dedup.MINHASH_TYPE}"
        select = (
            f'{ctes}\nSELECT doc_id, source, path, "offset", text, strlen(text)::BIGINT AS n_bytes, '
            f"_bytes_in, _drop, _reason{''.join(', ' + c for c in changed)}, "
            f"CASE WHEN _drop IS NULL THEN {norm_key} END AS norm_key, "
            f"CASE WHEN _drop IS NULL THEN {mh} END AS mh FROM {last}"
        )
        with atomic_path(work_file, fsync=False) as tmp:  # a temporary file: no fsync, no compression
            try:
                con.execute(
                    f"COPY ({select}) TO {_lit(tmp)} (FORMAT parquet, COMPRESSION uncompressed, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
                )
            except duckdb.Error as e:
                raise StageError(f"cleaning {part} failed: {e}") from e
        result = _summarise_shard(con, part, work_file, rules, config)
    dt = time.perf_counter() - t0
    log.info(
        "%s: %d -> %d rows, %.1f MB in %.1fs (%.1f MB/s)",
        part.name,
        result["rows_in"],
        result["rows_out"],
        result["bytes_in"] / 1e6,
        dt,
        result["bytes_in"] / 1e6 / max(dt, 1e-9),
    )
    return result


def _snippet(text: str | None, start: int = 0) -> str | None:
    if text is None:
        return None
    start = max(0, start)
    s = text[start : start + SNIPPET_CHARS]
    return ("…" if start > 0 else "") + s + ("…" if start + SNIPPET_CHARS < len(text) else "")


_INVISIBLE = {"Cc", "Cf", "Mn", "Me", "Zl", "Zp", "Zs"}


def _visible(s: str | None) -> str | None:
    """Spell out the characters a reader cannot see (controls, zero-width and combining marks,
    unusual spaces) as ⟨U+XXXX⟩, so that an NFC or control-character change shows in the report."""
    if s is None:
        return None
    return "".join(
        f"⟨U+{ord(ch):04X}⟩" if ch not in " \n\t" and unicodedata.category(ch) in _INVISIBLE else ch
        for ch in s
    )


def _diff_snippets(before: str, after: str) -> tuple[str | None, str | None]:
    """Before/after windows that start a little ahead of the first change."""
    i = next((k for k, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), None)
    start = max(0, (min(len(before), len(after)) if i is None else i) - 40)
    return _visible(_snippet(before, start)), _visible(_snippet(after, start))


def _key(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("doc_id", "source", "path", "offset")}


def _summarise_shard(
    con: duckdb.DuckDBPyConnection, part: Path, work_file: Path, rules: list[Rule], config: CleanConfig
) -> dict[str, Any]:
    w = f"read_parquet({_lit(work_file)})"
    k = config.examples_per_rule
    maps = [r for r in rules if r.kind == "map"]
    totals = con.execute(
        "SELECT count(*), coalesce(sum(_bytes_in), 0), count(*) FILTER (WHERE _drop IS NULL), "
        "coalesce(sum(n_bytes) FILTER (WHERE _drop IS NULL), 0)"
        + "".join(f', count(*) FILTER (WHERE "_changed_{r.name}")' for r in maps)
        + f" FROM {w}"
    ).fetchone()
    rows_in, bytes_in, rows_out, bytes_out = (int(x) for x in totals[:4])
    n_changed = dict(zip([r.name for r in maps], (int(x) for x in totals[4:]), strict=True))
    dropped: dict[str, dict[str, int]] = {}
    for rule, reason, n in con.execute(
        f"SELECT _drop, _reason, count(*) FROM {w} WHERE _drop IS NOT NULL GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        dropped.setdefault(rule, {})[reason] = int(n)

    summary: dict[str, dict[str, Any]] = {}
    traced: dict[str, list[dict[str, Any]]] = {}
    for r in rules:
        if r.kind == "map":
            summary[r.name] = {"kind": "map", "changed": n_changed[r.name], "examples": []}
            if k and n_changed[r.name]:
                rows = con.execute(
                    f'SELECT doc_id, source, path, "offset" FROM {w} WHERE "_changed_{r.name}" '
                    f"ORDER BY {KEY_ORDER} LIMIT {k}"
                ).fetchall()
                traced[r.name] = [
                    dict(zip(("doc_id", "source", "path", "offset"), x, strict=True)) for x in rows
                ]
        else:
            reasons = dropped.get(r.name, {})
            ex = []
            for reason in reasons if k else []:
                for doc_id, source, path, offset, text in con.execute(
                    f'SELECT doc_id, source, path, "offset", text FROM {w} WHERE _drop = ? AND _reason = ? '
                    f"ORDER BY {KEY_ORDER} LIMIT {k}",
                    [r.name, reason],
                ).fetchall():
                    ex.append(
                        {
                            "doc_id": doc_id,
                            "source": source,
                            "path": path,
                            "offset": offset,
                            "reason": reason,
                            "text": _snippet(text),
                        }
                    )
            summary[r.name] = {
                "kind": "filter",
                "dropped": sum(reasons.values()),
                "reasons": reasons,
                "examples": ex,
            }
    if traced:
        _trace_examples(con, part, rules, traced, summary)
    return {
        "part": str(part),
        "work": str(work_file),
        "rows_in": rows_in,
        "bytes_in": bytes_in,
        "rows_out": rows_out,
        "bytes_out": bytes_out,
        "rules": summary,
    }


def _trace_examples(
    con: duckdb.DuckDBPyConnection,
    part: Path,
    rules: list[Rule],
    traced: dict[str, list[dict[str, Any]]],
    summary: dict[str, dict[str, Any]],
) -> None:
    """Re-run the chain on the few example rows only, keeping each map rule's input and output."""
    ids = sorted({e["doc_id"] for exs in traced.values() for e in exs})
    source = f"SELECT * FROM ({_source_sql(part)}) WHERE doc_id IN (SELECT unnest(?::VARCHAR[]))"
    ctes, last = chain_sql(rules, source, trace=True)
    cur = con.execute(f"{ctes} SELECT * FROM {last}", [ids])
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for rule, examples in traced.items():
        for ex in examples:
            match = next((row for row in rows if _key(row) == ex), None)
            if match is None:  # pragma: no cover - the same rows, the same rules
                continue
            before, after = _diff_snippets(match[f"_before_{rule}"], match[f"_after_{rule}"])
            if rule == "pii":
                before = None  # never copy the personal data we just removed into the report
            summary[rule]["examples"].append({**ex, "before": before, "after": after})


# --------------------------------------------------------------------------- whole corpus


def dedup_shards(
    shard_results: list[dict[str, Any]],
    work_dir: str | os.PathLike,
    config: CleanConfig | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Exact and near-duplicate removal over the rows every shard kept.

    Writes `work_dir/dedup.parquet` (the rows to drop: key, rule, reason, dup_of, similarity,
    n_bytes, and where they lie in the work files) and returns counts and examples per rule.
    The only table held for the whole corpus is `keys` (gid, shard, row, norm_key: 40 bytes a
    document, in DuckDB, which spills); band hashes stream from the work files, and full MinHash
    signatures are read for the candidate pairs alone.
    """
    config = _as_config(config)
    work_dir = Path(work_dir)
    out = work_dir / "dedup.parquet"
    works = [r["work"] for r in shard_results]
    corpus_rules = {r.name: r for r in load_rules() if r.kind in ("corpus", "candidates")}
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    with connect(config, work_dir) as con:
        _work_view(con, works)
        con.execute(
            "CREATE TEMP TABLE drops (gid BIGINT, rule VARCHAR, reason VARCHAR, dup_of BIGINT, similarity DOUBLE)"
        )
        con.execute(
            f"CREATE TEMP TABLE keys AS SELECT row_number() OVER (ORDER BY {KEY_ORDER}, n_bytes, norm_key) AS gid, "
            "shard, row, norm_key FROM work WHERE _drop IS NULL"
        )
        rows_in = con.execute("SELECT count(*) FROM keys").fetchone()[0]
        remaining = rows_in
        for name in ("exact_dedup", "near_dedup"):
            if name not in corpus_rules or not config.is_on(name):
                continue
            r = corpus_rules[name]
            try:
                if r.kind == "corpus":
                    live = "SELECT gid, norm_key FROM keys WHERE gid NOT IN (SELECT gid FROM drops)"
                    con.execute(
                        f"INSERT INTO drops SELECT gid, {_lit(name)}, reason, dup_of, similarity "
                        f"FROM ({over_input(live, r)})"
                    )
                    info: dict[str, Any] = {}
                else:
                    live = (
                        "SELECT k.gid, w.mh.bands AS bands FROM keys k JOIN work w USING (shard, row) "
                        "WHERE k.gid NOT IN (SELECT gid FROM drops)"
                    )
                    info = _near_dedup(con, r, live, config)
            except duckdb.Error as e:
                raise StageError(f"{r.path}: the rule failed: {e}") from e
            n = con.execute("SELECT count(*) FROM drops WHERE rule = ?", [name]).fetchone()[0]
            summary[name] = {
                "kind": r.kind,
                "rows_in": remaining,
                "dropped": int(n),
                "reasons": {"exact" if name == "exact_dedup" else "near": int(n)} if n else {},
                "examples": _dedup_examples(con, name, config.examples_per_rule),
                **info,
            }
            remaining -= n
        with atomic_path(out, fsync=False) as tmp:
            con.execute(
                f'COPY (SELECT w.doc_id, w.source, w.path, w."offset", d.rule, d.reason, wo.doc_id AS dup_of, '
                f"d.similarity, w.n_bytes, w.filename, w.row AS file_row_number "
                f"FROM drops d JOIN keys k USING (gid) JOIN work w ON w.shard = k.shard AND w.row = k.row "
                f"JOIN keys o ON o.gid = d.dup_of JOIN work wo ON wo.shard = o.shard AND wo.row = o.row "
                f"ORDER BY d.gid) TO {_lit(tmp)} (FORMAT parquet)"
            )
    dt = time.perf_counter() - t0
    log.info(
        "dedup: %d rows -> %d in %.1fs %s",
        rows_in,
        remaining,
        dt,
        {k: v["dropped"] for k, v in summary.items()},
    )
    return {"output": str(out), "rows_in": int(rows_in), "rows_out": int(remaining), "rules": summary}


def _work_view(con: duckdb.DuckDBPyConnection, works: list[str]) -> None:
    """`work`: every shard's work file, each row with (shard, row): its file's index and row number."""
    con.execute("CREATE TEMP TABLE shards (shard INTEGER, filename VARCHAR)")
    if works:
        con.executemany("INSERT INTO shards VALUES (?, ?)", list(enumerate(works)))
        con.execute(
            "CREATE TEMP VIEW work AS SELECT s.shard, w.file_row_number AS row, w.* "
            f"FROM read_parquet({_list_lit(works)}, filename = true, file_row_number = true) w "
            "JOIN shards s USING (filename)"
        )
    else:  # no input parts: an empty view of the same shape
        con.execute(
            "CREATE TEMP VIEW work AS SELECT NULL::INTEGER AS shard, NULL::BIGINT AS row, NULL::VARCHAR AS doc_id, "
            'NULL::VARCHAR AS source, NULL::VARCHAR AS path, NULL::BIGINT AS "offset", NULL::VARCHAR AS text, '
            "NULL::BIGINT AS n_bytes, NULL::VARCHAR AS _drop, NULL::UHUGEINT AS norm_key, "
            f"NULL::{dedup.MINHASH_TYPE} AS mh, NULL::VARCHAR AS filename WHERE false"
        )


def _near_dedup(con: duckdb.DuckDBPyConnection, rule: Rule, live: str, config: CleanConfig) -> dict[str, Any]:
    """Candidates from LSH buckets (SQL), checked with the signatures, grouped into connected
    components. Signatures stay in DuckDB (which spills past memory_limit); Python sees them one
    batch of pairs at a time, so memory does not grow with the number of candidates."""
    con.execute(f"CREATE TEMP TABLE pairs AS {over_input(live, rule)}")
    n_pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    info = {
        **dedup.describe(config.num_perm, config.shingle_words, config.near_dedup_threshold),
        "candidate_pairs": int(n_pairs),
        "similar_pairs": 0,
    }
    if not n_pairs:
        return info
    con.execute(
        "CREATE TEMP TABLE cand_sig AS SELECT k.gid, w.mh.sig AS sig FROM keys k JOIN work w USING (shard, row) "
        "WHERE k.gid IN (SELECT a FROM pairs UNION SELECT b FROM pairs)"
    )

    def similarities(pair_sql: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        reader = con.sql(
            f"SELECT p.a, p.b, x.sig AS sa, y.sig AS sb FROM ({pair_sql}) p "
            f"JOIN cand_sig x ON x.gid = p.a JOIN cand_sig y ON y.gid = p.b"
        ).to_arrow_reader(PAIR_BATCH)
        for batch in reader:
            sa = dedup.signatures_from_blobs(batch.column("sa"), config.num_perm)
            sb = dedup.signatures_from_blobs(batch.column("sb"), config.num_perm)
            a = dedup.np_values(batch.column("a")).astype(np.int64)
            b = dedup.np_values(batch.column("b")).astype(np.int64)
            yield a, b, dedup.similarity(sa, sb)

    edges = [np.zeros((0, 2), np.int64)]
    for a, b, sim in similarities("SELECT a, b FROM pairs"):
        ok = sim >= config.near_dedup_threshold
        edges.append(np.stack([a[ok], b[ok]], axis=1))
    similar = np.concatenate(edges)
    info["similar_pairs"] = len(similar)
    nodes, roots = dedup.cluster(similar)
    dropped = nodes != roots
    if dropped.any():
        con.register("near_keep", pa.table({"a": nodes[dropped], "b": roots[dropped]}))
        # the similarity of each dropped document to the one kept (24 bytes a row, in memory)
        got = list(similarities("SELECT a, b FROM near_keep"))
        con.unregister("near_keep")
        cols = [np.concatenate([g[i] for g in got]) for i in range(3)]
        con.register("near_drops", pa.table({"gid": cols[0], "dup_of": cols[1], "similarity": cols[2]}))
        con.execute(
            f"INSERT INTO drops SELECT gid, {_lit(rule.name)}, 'near', dup_of, round(similarity, 4) FROM near_drops"
        )
        con.unregister("near_drops")
    return info


def _dedup_examples(con: duckdb.DuckDBPyConnection, rule: str, k: int) -> list[dict[str, Any]]:
    """The first `k` drops of a dedup rule (gid order), with snippets of the dropped and kept text."""
    if not k:
        return []
    rows = con.execute(
        "SELECT d.reason, d.similarity, k.shard, k.row, o.shard, o.row FROM drops d JOIN keys k USING (gid) "
        f"JOIN keys o ON o.gid = d.dup_of WHERE d.rule = ? ORDER BY d.gid LIMIT {k}",
        [rule],
    ).fetchall()
    docs = _work_rows(con, [(r[2], r[3]) for r in rows] + [(r[4], r[5]) for r in rows])
    out = []
    for reason, sim, s1, r1, s2, r2 in rows:
        doc, kept = docs[(s1, r1)], docs[(s2, r2)]
        out.append(
            {
                **_key(doc),
                "reason": reason,
                "dup_of": kept["doc_id"],
                "similarity": round(float(sim), 4),
                "text": _snippet(doc["text"]),
                "kept_text": _snippet(kept["text"]),
            }
        )
    return out


def _work_rows(con: duckdb.DuckDBPyConnection, where: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """A few work-file rows (key and text) by (shard, row)."""
    if not where:
        return {}
    wanted = "SELECT unnest(?::STRUCT(s INTEGER, r BIGINT)[]) AS x"
    cur = con.execute(
        'SELECT shard, row, doc_id, source, path, "offset", text FROM work '
        f"WHERE (shard, row) IN (SELECT unnest(x, recursive := true) FROM ({wanted}))",
        [[{"s": s, "r": r} for s, r in sorted(set(where))]],
    )
    names = [d[0] for d in cur.description]
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in cur.fetchall()}


# --------------------------------------------------------------------------- finalize


def finalize(
    shard_results: list[dict[str, Any]],
    dedup_result: dict[str, Any],
    out: str | os.PathLike,
    config: CleanConfig | dict[str, Any] | None = None,
    upstream: str | None = None,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write OUT: the kept rows in (doc_id, source, path, offset) order cut into parts of about
    `part_bytes`, dropped.parquet, report.json, and the manifest last. OUT is built in a temporary
    folder beside it and renamed into place; an older clean output there is replaced."""
    config = _as_config(config)
    out = Path(out)
    work_dir = Path(work_dir) if work_dir else Path(dedup_result["output"]).parent
    _check_out(out)
    works = [r["work"] for r in shard_results]
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        with connect(config, work_dir) as con:
            parts, bytes_out = _write_parts(con, works, dedup_result["output"], tmp, config)
            dropped = _write_dropped(con, works, dedup_result["output"], tmp)
        report = build_report(shard_results, dedup_result, config, bytes_out)
        atomic_write_json(tmp / "report.json", report)
        artifacts = [output_record(tmp / "report.json", tmp), dropped]
        counts = {
            "rows_in": report["rows_in"],
            "rows_out": report["rows_out"],
            "bytes_in": report["bytes_in"],
            "bytes_out": report["bytes_out"],
            "dropped": {r["rule"]: r["dropped"] for r in report["rules"] if r["kind"] != "map"},
            "changed": {r["rule"]: r["changed"] for r in report["rules"] if r["kind"] == "map"},
        }
        if sum(p["rows"] for p in parts) != report["rows_out"]:  # pragma: no cover - internal invariant
            raise StageError(
                f"internal error: wrote {sum(p['rows'] for p in parts)} rows, expected {report['rows_out']}"
            )
        manifest = make_manifest(
            STAGE, config.identity(), parts, counts, upstream=upstream, artifacts=artifacts, report=report
        )
        write_manifest(tmp, manifest)
        fsync_dir(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_out(out: Path) -> None:
    """OUT may be missing, empty, or an earlier clean output; anything else is not ours to replace."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise StageError(f"{out} exists and is not a clean output folder; choose another --out or remove it")
    if (out / MANIFEST).is_file():
        m = read_manifest(out)
        if m.get("stage") != STAGE:
            raise StageError(f"{out} holds the output of stage {m.get('stage')!r}; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.old.", dir=out.parent))
        os.rename(out, old / "x")
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_dir(out.parent)


def _write_parts(
    con: duckdb.DuckDBPyConnection, works: list[str], dedup_file: str, tmp: Path, config: CleanConfig
) -> tuple[list[dict[str, Any]], int]:
    """The kept rows in order, cut into parts; returns their records and the bytes of text."""
    if not works:
        return [], 0
    src = f"read_parquet({_list_lit(works)}, filename = true, file_row_number = true)"
    sql = (
        f'SELECT w.doc_id, w.source, w.path, w."offset", w.text, w.n_bytes FROM {src} w '
        f"ANTI JOIN read_parquet({_lit(dedup_file)}) d ON w.filename = d.filename AND w.file_row_number = d.file_row_number "
        f"WHERE w._drop IS NULL ORDER BY {KEY_ORDER}, text"
    )
    reader = con.sql(sql).to_arrow_reader(ROW_GROUP_ROWS)
    parts: list[dict[str, Any]] = []
    pending: list[pa.Table] = []
    pending_bytes = 0
    total = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            table = pa.concat_tables(pending).combine_chunks()
            parts.append(write_parquet(table, tmp / f"part-{len(parts):05d}.parquet"))
            pending, pending_bytes = [], 0

    for batch in reader:
        table = pa.Table.from_batches([batch]).cast(OUT_SCHEMA)
        total += int(pc.sum(batch.column("n_bytes")).as_py() or 0)
        while table.num_rows:
            # cut at the row where the part reaches part_bytes: independent of batch sizes
            cum = np.cumsum(dedup.np_values(table.column("n_bytes"))) + pending_bytes
            j = int(np.searchsorted(cum, config.part_bytes, side="left")) + 1
            if j > table.num_rows:
                pending.append(table)
                pending_bytes = int(cum[-1])
                break
            pending.append(table.slice(0, j))
            flush()
            table = table.slice(j)
    flush()
    return parts, total


def _write_dropped(
    con: duckdb.DuckDBPyConnection, works: list[str], dedup_file: str, tmp: Path
) -> dict[str, Any]:
    """dropped.parquet: every dropped row's key, rule, reason (and dup_of), streamed in order."""
    path = tmp / "dropped.parquet"
    batches: Any = [DROPPED_SCHEMA.empty_table()]
    if works:
        src = f"read_parquet({_list_lit(works)}, filename = true, file_row_number = true)"
        sql = (
            f'SELECT doc_id, source, path, "offset", rule, reason, dup_of, similarity, n_bytes FROM ('
            f'SELECT doc_id, source, path, "offset", _drop AS rule, _reason AS reason, NULL::VARCHAR AS dup_of, '
            f"NULL::DOUBLE AS similarity, n_bytes FROM {src} WHERE _drop IS NOT NULL "
            f'UNION ALL SELECT doc_id, source, path, "offset", rule, reason, dup_of, similarity, n_bytes '
            f"FROM read_parquet({_lit(dedup_file)})"
            f") ORDER BY {KEY_ORDER}, rule"
        )
        batches = con.sql(sql).to_arrow_reader(ROW_GROUP_ROWS)
    rows = 0
    with atomic_path(path) as tmp_file:
        writer = pq.ParquetWriter(tmp_file, DROPPED_SCHEMA, compression="zstd", write_statistics=True)
        pending: list[pa.Table] = []
        n_pending = 0
        for batch in batches:
            table = (batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])).cast(
                DROPPED_SCHEMA
            )
            pending.append(table)
            n_pending += table.num_rows
            while n_pending >= ROW_GROUP_ROWS:  # row groups of exactly ROW_GROUP_ROWS: batch sizes never show
                whole = pa.concat_tables(pending)
                writer.write_table(
                    whole.slice(0, ROW_GROUP_ROWS).combine_chunks(), row_group_size=ROW_GROUP_ROWS
                )
                pending, n_pending = [whole.slice(ROW_GROUP_ROWS)], n_pending - ROW_GROUP_ROWS
                rows += ROW_GROUP_ROWS
        if n_pending or rows == 0:
            rest = pa.concat_tables([DROPPED_SCHEMA.empty_table(), *pending]).combine_chunks()
            writer.write_table(rest, row_group_size=ROW_GROUP_ROWS)
            rows += n_pending
        writer.close()
    return {**output_record(path, tmp), "rows": rows}


def build_report(
    shard_results: list[dict[str, Any]], dedup_result: dict[str, Any], config: CleanConfig, bytes_out: int
) -> dict[str, Any]:
    """Rows in/out per rule over all shards, with the first examples in document order."""
    k = config.examples_per_rule
    rows_in = sum(r["rows_in"] for r in shard_results)
    bytes_in = sum(r["bytes_in"] for r in shard_results)
    rules_out = []
    remaining = rows_in
    for rule in config.enabled():
        per = [r["rules"][rule.name] for r in shard_results if rule.name in r["rules"]]
        entry: dict[str, Any] = {
            "rule": rule.name,
            "kind": rule.kind,
            "file": f"tasks/sql/{rule.path.name}",
            "description": rule.description,
            "rows_in": remaining,
        }
        examples = [e for p in per for e in p["examples"]]
        if rule.kind == "map":
            entry["changed"] = sum(p["changed"] for p in per)
            entry["rows_out"] = remaining
        else:
            reasons: dict[str, int] = {}
            for p in per:
                for reason, n in p["reasons"].items():
                    reasons[reason] = reasons.get(reason, 0) + n
            entry["dropped"] = sum(reasons.values())
            entry["reasons"] = dict(sorted(reasons.items()))
            remaining -= entry["dropped"]
            entry["rows_out"] = remaining
            by_reason: dict[str, list[dict[str, Any]]] = {}
            for e in sorted(examples, key=_example_order):
                by_reason.setdefault(e["reason"], []).append(e)
            examples = [e for reason in sorted(by_reason) for e in by_reason[reason][:k]]
        entry["examples"] = sorted(examples, key=_example_order)[: k if rule.kind == "map" else None]
        rules_out.append(entry)
    for name, d in dedup_result["rules"].items():
        rule = next(r for r in load_rules() if r.name == name)
        entry = {
            "rule": name,
            "kind": d["kind"],
            "file": f"tasks/sql/{rule.path.name}",
            "description": rule.description,
            "rows_in": remaining,
            "dropped": d["dropped"],
            "reasons": d["reasons"],
        }
        remaining -= d["dropped"]
        entry["rows_out"] = remaining
        entry.update({k2: v for k2, v in d.items() if k2 not in entry and k2 not in ("kind", "rows_in")})
        rules_out.append(entry)
    return {
        "rows_in": rows_in,
        "rows_out": remaining,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "rules": rules_out,
    }


def _example_order(e: dict[str, Any]) -> tuple:
    return (e["doc_id"], e["source"] or "", e["path"] or "", e["offset"] if e["offset"] is not None else -1)


# --------------------------------------------------------------------------- run


def _cached(out: Path, upstream: str, config: CleanConfig) -> dict[str, Any] | None:
    if not (out / MANIFEST).is_file():
        return None
    try:
        m = read_manifest(out, STAGE)
        if m.get("upstream") != upstream or m.get("config_sha256") != _sha256_json(config.identity()):
            return None
        verify_outputs(out, m)
        verify_outputs(out, {"outputs": m.get("artifacts", [])})
    except (DataError, OSError, ValueError):
        return None
    return m


def _remove_own_leftovers(out: Path) -> None:
    """Delete what an interrupted clean into `out` left beside it (.tmp-<out>.*), and nothing else:
    other stages may be writing their own temporary files in the same folder right now."""
    ours = re.compile(rf"{re.escape(TMP_PREFIX + out.name)}\.(work\.|old\.)?[a-z0-9_]{{8}}")
    for p in out.parent.glob(f"{TMP_PREFIX}{out.name}.*"):
        if not ours.fullmatch(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _clean_parts(parts: list[Path], work_dir: Path, config: CleanConfig) -> list[dict[str, Any]]:
    """clean_shard over every part: in this process, or in `config.workers` processes."""
    progress = Progress("clean", total=len(parts), unit="parts", logger=log)
    workers = min(config.workers, len(parts))
    if workers <= 1:
        results = []
        for p in parts:
            results.append(clean_shard(p, work_dir, config))
            progress.update(1, results[-1]["bytes_in"])
    else:
        # spawn: a fresh interpreter per worker (forking a process that holds DuckDB threads is unsafe)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(clean_shard, p, work_dir, config.model_dump()) for p in parts]
            for f in concurrent.futures.as_completed(futures):
                progress.update(1, f.result()["bytes_in"])
            results = [f.result() for f in futures]  # in part order, whatever finished first
    progress.close()
    return results


def run_clean(
    in_dir: str | os.PathLike, out: str | os.PathLike, config: CleanConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Clean an ingest output folder into OUT; returns the manifest (with the report).

    A finished OUT for the same ingest digest and config is returned as is (nothing runs)."""
    config = _as_config(config)
    in_dir, out = Path(in_dir), Path(out)
    upstream = read_manifest(in_dir, "ingest")["digest"]
    _remove_own_leftovers(out)  # also when cached: a run killed after publishing leaves its work folder
    cached = _cached(out, upstream, config)
    if cached is not None:
        log.info("%s is up to date (ingest %s, same config); nothing to do", out, upstream[:12])
        return cached
    parts = input_parts(in_dir, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_out(out)
    work_dir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.work.", dir=out.parent))
    t0 = time.perf_counter()
    try:
        results = _clean_parts(parts, work_dir, config)
        dd = dedup_shards(results, work_dir, config)
        manifest = finalize(results, dd, out, config, upstream=upstream, work_dir=work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    c = manifest["counts"]
    dt = time.perf_counter() - t0
    log.info(
        "clean: %d -> %d rows, %.1f -> %.1f MB in %.1fs (%.1f MB/s); dropped %s",
        c["rows_in"],
        c["rows_out"],
        c["bytes_in"] / 1e6,
        c["bytes_out"] / 1e6,
        dt,
        c["bytes_in"] / 1e6 / max(dt, 1e-9),
        c["dropped"],
    )
    return manifest


__all__ = [
    "CleanConfig",
    "Rule",
    "build_report",
    "chain_sql",
    "clean_shard",
    "connect",
    "dedup_shards",
    "finalize",
    "fix_mojibake",
    "input_parts",
    "load_rules",
    "rule_names",
    "run_clean",
    "text_stats",
]
