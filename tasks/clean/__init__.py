"""Clean: the ingest stage's Parquet -> cleaned, deduplicated Parquet, with a report of every rule.

    input_parts(in_dir, config)                       -> the ingest data parts (checked)
    clean_shard(part_path, work_dir, config)          -> per-document rules on one part (map this)
    dedup_shards(shard_results, work_dir, config)     -> exact + near dedup over all parts
    write_output(shard_results, dedup_result, folder, config, upstream) -> parts, report, manifest
    run_clean(in_dir, out, config)                    -> the stage (tasks/clean/stage.py), keyed,
                                                         published atomically

Rules are SQL files in tasks/sql/, one rule each, applied in the order of their number prefix:

    010_mojibake  020_control_chars  030_nfc  040_whitespace  050_pii     (kind: map, rewrite text)
    060_length  065_language  070_quality  075_decontaminate               (kind: filter, drop rows)
    080_exact_dedup  090_near_dedup                                       (whole corpus)

A map rule is `SELECT * REPLACE (<expr> AS text) FROM input`; a filter rule adds a `reason`
column (NULL keeps the row). Thresholds reach the SQL as DuckDB variables (`getvariable('...')`)
set from `CleanConfig`; `rules` switches any rule off. A user's own map and filter rules, in the
same format, live in the folder `rules_dir` and run among the built-ins by number prefix; they are
checked (name, kind, variables, SQL bound against the ingest columns) when the config is built,
before any work. The per-document rules of one part run as ONE streaming DuckDB query (each rule a
CTE over the previous one) that writes the part's work file; nothing is materialised between
rules. Where SQL is slow or cannot do it, Python UDFs help: mojibake repair (only on rows a regular
expression flags), numpy character-class counts for the quality heuristics (`text_stats`,
vectorised over a batch), numpy MinHash signatures. DuckDB runs Python UDFs one call at a time, so
a shard uses about one core; shards run in parallel (an orchestrator mapping clean_shard, or
processes in run_clean), each process with its share of the stage's cores (`workers`, all by
default) and of `memory_limit` (engine.py says what bounds each phase).

Output folder OUT: part-*.parquet and dropped.parquet (output.py), report.json (report.py), and
manifest.json: stage "clean", upstream = the ingest digest, outputs = the parts, artifacts =
report.json + dropped.parquet, counts, and the report.

The same input and config give byte-identical parts, dropped.parquet and report.json: every
ordering is explicit, and no timestamp or run id goes into them. The manifest's config and digest
leave out the engine settings (threads, memory_limit, workers), which never change the output.

The modules, by concern (each imports only those above it):

    arrays    zero-copy numpy views of Arrow arrays
    text      mojibake repair and text statistics (the Python UDFs on text)
    minhash   MinHash signatures, LSH bands, exact shingle Jaccard (numpy)
    langid    language identification with CLD2 (the language rule's UDF)
    decontam  n-gram overlap with the evaluation texts (the decontaminate rule's UDF)
    rules     Rule, reading and checking rule files (built-in and rules_dir)
    chain     rules -> one DuckDB query; UDF registration; binding checks
    config    CleanConfig, rule_files
    report    report.json and its snippets
    engine    DuckDB connection, input parts, clean_shard
    dedup     dedup_shards (exact and near-duplicate removal over the corpus)
    output    the Parquet writers of the kept and dropped rows, write_output
    stage     the stage declared once (tasks/stage.py runs it); run_clean
"""

from tasks.clean.chain import chain_sql
from tasks.clean.config import CleanConfig, rule_files
from tasks.clean.dedup import dedup_shards
from tasks.clean.engine import clean_shard, connect, input_parts
from tasks.clean.output import write_output
from tasks.clean.report import build_report
from tasks.clean.rules import Rule, load_rules, rule_names
from tasks.clean.stage import run_clean
from tasks.clean.text import fix_mojibake, text_stats

__all__ = [
    "CleanConfig",
    "Rule",
    "build_report",
    "chain_sql",
    "clean_shard",
    "connect",
    "dedup_shards",
    "fix_mojibake",
    "input_parts",
    "load_rules",
    "rule_files",
    "rule_names",
    "run_clean",
    "text_stats",
    "write_output",
]
