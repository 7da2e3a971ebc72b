"""How rules become DuckDB SQL: one streaming query per part, each rule a CTE over the previous one.

    chain_sql(rules, source_sql)        -> the CTEs that apply per-document rules in order
    over_input(input_sql, rule)         -> one rule's query with its `input` bound
    register_udfs(con, minhash, decontam) -> the Python functions the rule SQL calls
    validate_chain(con, rules)          -> bind the chain on an empty input, naming a broken rule file
    check_rule_sql(rules, variables, minhash) -> the same on a connection of its own (config checks)

Also the SQL literal helpers every module that writes SQL text uses.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.clean.decontam import OVERLAP_TYPE, overlap_udf
from tasks.clean.langid import LANG_TYPE, language_of_arrow
from tasks.clean.minhash import MINHASH_TYPE, minhash_udf
from tasks.clean.rules import Rule
from tasks.clean.text import STATS_TYPE, fix_mojibake, text_stats_arrow
from tasks.common import StageError, sql_string

# The columns of the ingest output that the rules see (see engine.source_sql), with none of its rows.
EMPTY_INPUT_SQL = (
    "SELECT NULL::VARCHAR AS doc_id, NULL::VARCHAR AS source, NULL::VARCHAR AS path, "
    'NULL::BIGINT AS "offset", NULL::VARCHAR AS text WHERE false'
)
CHAIN_COLUMNS = {"doc_id", "source", "path", "offset", "text", "_bytes_in", "_drop", "_reason"}


def register_udfs(
    con: duckdb.DuckDBPyConnection,
    minhash: tuple[int, int, float] | None,
    decontam: tuple[tuple[Path, ...], int] = ((), 13),
) -> None:
    """fix_mojibake, text_stats, language_of and eval_overlap (over the evaluation files and
    n-gram length of `decontam`); minhash too when `minhash` = (num_perm, shingle_words, threshold)."""
    con.create_function("fix_mojibake", fix_mojibake, ["VARCHAR"], "VARCHAR", side_effects=False)
    con.create_function(
        "text_stats", text_stats_arrow, ["VARCHAR"], con.type(STATS_TYPE), type="arrow", side_effects=False
    )
    con.create_function(
        "language_of",
        language_of_arrow,
        ["VARCHAR"],
        con.type(LANG_TYPE),
        type="arrow",
        null_handling="special",
        side_effects=False,
    )
    con.create_function(
        "eval_overlap",
        overlap_udf(*decontam),
        ["VARCHAR", "VARCHAR"],  # (text, doc_id)
        con.type(OVERLAP_TYPE),
        type="arrow",
        null_handling="special",  # NULL: no n-gram shared
        side_effects=False,
    )
    if minhash is not None:
        con.create_function(
            "minhash",
            minhash_udf(*minhash),
            ["VARCHAR"],
            con.type(MINHASH_TYPE),
            type="arrow",
            null_handling="special",  # too short for one shingle: NULL
            side_effects=False,
        )


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
                f"CASE WHEN _drop IS NULL AND reason IS NOT NULL THEN {sql_string(r.name)} ELSE _drop END AS _drop, "
                f"CASE WHEN _drop IS NULL THEN reason ELSE _reason END AS _reason) FROM s{i}_out)"
            )
        else:  # pragma: no cover - enabled() only passes per-document kinds
            raise StageError(f"{r.path}: kind {r.kind!r} is not a per-document rule")
        prev = f"s{i}"
    return "WITH " + ",\n".join(ctes), prev


def validate_chain(con: duckdb.DuckDBPyConnection, rules: list[Rule]) -> None:
    """Bind each rule on an empty input shaped like its real one (the ingest columns after the rules
    before it), then the whole chain, so that a broken rule file is named with what is wrong."""
    for k, rule in enumerate(rules):
        ctes, last = chain_sql(rules[:k], EMPTY_INPUT_SQL)
        try:
            cur = con.execute(f"{ctes} SELECT * FROM ({over_input(f'SELECT * FROM {last}', rule)}) LIMIT 0")
        except duckdb.Error as e:
            raise StageError(f"{rule.path}: the rule does not run: {e}") from e
        cols = {d[0] for d in cur.description}
        want = CHAIN_COLUMNS | ({"reason"} if rule.kind == "filter" else set())
        if not want <= cols:
            raise StageError(
                f"{rule.path}: a {rule.kind} rule must keep every input column (SELECT * ...)"
                + (" and add a `reason` column (NULL keeps the row)" if rule.kind == "filter" else "")
                + f"; missing {sorted(want - cols)}"
            )
    ctes, last = chain_sql(rules, EMPTY_INPUT_SQL)
    try:
        con.execute(f"{ctes} SELECT * FROM {last} LIMIT 0")
    except duckdb.Error as e:  # pragma: no cover - each rule bound on its own above
        raise StageError(f"{[r.file for r in rules]}: the rules do not run together: {e}") from e


def check_rule_sql(
    rules: list[Rule], variables: dict[str, object], minhash: tuple[int, int, float] | None
) -> None:
    """validate_chain on an in-memory connection with the rules' variables and UDFs: no spill
    folder, no limits; for checking a config before any work starts."""
    con = duckdb.connect()
    try:
        for name, value in variables.items():
            con.execute(f"SET VARIABLE {name} = ?", [value])
        register_udfs(con, minhash)
        validate_chain(con, rules)
    finally:
        con.close()
