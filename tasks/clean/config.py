"""CleanConfig: which rules run (built-in and the user's `rules_dir`), their thresholds, and the
engine's limits; and `rule_files`, the rule files a config runs (for cache keys)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from tasks.clean.chain import check_rule_sql
from tasks.clean.decontam import eval_digests
from tasks.clean.minhash import lsh_params
from tasks.clean.rules import PER_DOC_KINDS, Rule, check_variables, load_rules, load_user_rules
from tasks.common import MemoryLimit, StageError

MiB = 1 << 20
ENGINE_FIELDS = {"threads", "memory_limit", "workers"}  # change speed and memory, never the output
PII_TYPES = ("email", "ipv4", "ipv6", "phone")


class CleanConfig(BaseModel):
    """Which rules run, their thresholds, and the engine's limits."""

    model_config = ConfigDict(extra="forbid")

    rules: dict[str, bool] = Field(
        default_factory=dict,
        description="Switch rules on or off by name: mojibake, control_chars, nfc, whitespace, pii, "
        "length, quality, exact_dedup, near_dedup, and the rules of rules_dir. Rules not named here stay on.",
    )
    rules_dir: Path | None = Field(
        None,
        description="A folder of your own rule files, NNN_<name>.sql (map or filter rules, in the format "
        "of tasks/sql/), run with the built-in rules in the order of their number prefix.",
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
    languages: list[str] = Field(
        default_factory=list,
        description="language: keep only documents in these languages (the codes CLD2 gives: en, fr, de, "
        "... ; 'und' keeps documents whose language it cannot tell); empty: keep every language.",
    )
    decontaminate: bool = Field(
        True,
        description="decontaminate: drop training documents that share an n-gram with an evaluation text "
        "(false: only report the overlap).",
    )
    decontam_ngram: int = Field(
        13,
        ge=3,
        le=64,
        description="decontaminate: words per n-gram (normalised words, as in GPT-3's check).",
    )
    eval_texts: list[Path] = Field(
        default_factory=list,
        description="decontaminate: evaluation texts the training documents are checked against: text files "
        '(one text each) or .jsonl files ({"text": ...} per line, e.g. a dataset\'s frozen '
        "FORJA_HOME/data/<dataset>/eval/eval.jsonl). `forja run` adds evaluate.eval_text.",
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
    memory_limit: MemoryLimit = Field(
        "2GB",
        description="Memory the stage may use, all its processes together, e.g. '2GB': DuckDB gets half "
        "(split between the workers; it spills to disk in the work folder beyond it), the batches "
        "the stage holds itself the rest.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=512,
        description="DuckDB threads per process; none: the stage's cores (workers) divided between "
        "the processes cleaning parts at once, and all of them in dedup and output.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="CPU cores the stage uses; none: all of this machine's. run_clean cleans the "
        "parts in up to this many processes (at most one per 32 MB of input parts: a small corpus "
        "stays in this process), each with its share of the DuckDB threads; dedup and output run "
        "DuckDB with this many threads. 1: one core. Under an orchestrator that maps clean_shard "
        "itself, the mapping decides how many parts run at once.",
    )

    def cores(self) -> int:
        """The cores the stage uses: `workers`, or all that this process may run on."""
        return self.workers or len(os.sched_getaffinity(0))

    def duckdb_threads(self, processes: int = 1) -> int:
        """DuckDB threads of one of `processes` connections running at once."""
        return self.threads or max(1, self.cores() // max(1, processes))

    # The user's rules as read when the config was validated, and the sha256 of each file.
    _user_rules: tuple[Rule, ...] = PrivateAttr(default=())
    _user_digests: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("pii_types")
    @classmethod
    def _unique_pii(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=PII_TYPES.index)

    @field_validator("languages")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z]{2,4})?", c)]
        if bad:
            raise ValueError(f"languages: {bad} are not language codes; use codes such as 'en', 'fr', 'und'")
        return sorted(set(v))

    @field_validator("eval_texts")
    @classmethod
    def _eval_files(cls, v: list[Path]) -> list[Path]:
        missing = [str(p) for p in v if not Path(p).is_file()]
        if missing:
            raise ValueError(f"eval_texts: {missing} not found; give UTF-8 text or .jsonl files")
        return list(dict.fromkeys(Path(p).resolve() for p in v))

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
                lsh_params(self.near_dedup_threshold, self.num_perm)
            except ValueError as e:
                raise ValueError(
                    f"near_dedup_threshold {self.near_dedup_threshold} with num_perm {self.num_perm}: {e}; "
                    "lower the threshold or raise num_perm"
                ) from e
        return self

    @model_validator(mode="after")
    def _known_rules(self) -> CleanConfig:
        """Read and check the user's rule files (before any work starts), then the `rules` switches."""
        if self.rules_dir is not None:
            try:
                self._user_rules = load_user_rules(self.rules_dir, load_rules())
                check_variables(self._user_rules, self.sql_variables())
                # bind every per-document rule, switched off or not: a broken file fails now, not later
                check_rule_sql(self.all_rules(PER_DOC_KINDS), self.sql_variables(), self.minhash_params())
                self._user_digests = {
                    r.path.name: hashlib.sha256(r.path.read_bytes()).hexdigest() for r in self._user_rules
                }
            except (StageError, OSError) as e:
                raise ValueError(f"rules_dir: {e}") from e
        known = [r.name for r in self.all_rules()]
        unknown = sorted(set(self.rules) - set(known))
        if unknown:
            raise ValueError(f"rules: unknown rule(s) {unknown}; the rules are {known}")
        return self

    def is_on(self, rule: str) -> bool:
        return self.rules.get(rule, True)

    def all_rules(self, kinds: tuple[str, ...] | None = None) -> list[Rule]:
        """The built-in and the user's rules (of these kinds), in the order they run."""
        rules = sorted((*load_rules(), *self._user_rules), key=lambda r: r.order)
        return [r for r in rules if kinds is None or r.kind in kinds]

    def enabled(self, kinds: tuple[str, ...] | None = PER_DOC_KINDS) -> list[Rule]:
        """The rules of these kinds that are switched on, in the order they run."""
        return [r for r in self.all_rules(kinds) if self.is_on(r.name)]

    def minhash_params(self) -> tuple[int, int, float] | None:
        """(num_perm, shingle_words, threshold) of the minhash UDF; None with near_dedup off."""
        if not self.is_on("near_dedup"):
            return None
        return self.num_perm, self.shingle_words, self.near_dedup_threshold

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
            "languages": "," + ",".join(self.languages) + "," if self.languages else "",
            "decontaminate": bool(self.decontaminate),
        }

    def decontam_params(self) -> tuple[tuple[Path, ...], int]:
        """(evaluation files, n-gram length) of the eval_overlap UDF."""
        return tuple(self.eval_texts), int(self.decontam_ngram)

    def identity(self) -> dict[str, Any]:
        """The config as recorded in the manifest: everything that can change the output.

        The user's rules count by content ({file name: sha256}), not by where the folder is; without
        rules_dir the identity is what it was before rules_dir existed (the same stage digests)."""
        identity = self.model_dump(mode="json", exclude=ENGINE_FIELDS | {"rules_dir", "eval_texts"})
        if self.rules_dir is not None:
            identity["user_rules"] = dict(self._user_digests)
        if self.eval_texts:  # by content, like the user's rules
            identity["eval_texts"] = eval_digests(self.eval_texts)
        return identity


def as_config(config: CleanConfig | dict[str, Any] | None) -> CleanConfig:
    """A CleanConfig from a CleanConfig, its dict (as tasks pass it), or None (the defaults)."""
    if config is None:
        return CleanConfig()
    return config if isinstance(config, CleanConfig) else CleanConfig.model_validate(config)


def rule_files(config: CleanConfig | dict[str, Any] | None) -> list[Path]:
    """Every rule file the config runs, built-in and the user's, in order: a cache key hashes their content."""
    return [r.path for r in as_config(config).enabled(kinds=None)]
