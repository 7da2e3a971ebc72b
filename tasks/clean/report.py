"""The cleaning report: rows in and out per rule over all shards, drop reasons, and examples.

report.json: rows_in, rows_out, bytes_in, bytes_out, and `rules`, one entry per rule that ran, in
order: rule, kind, file, description, rows_in, rows_out; a map rule adds `changed` and examples
{doc key, before, after} (snippets around the first change, invisible characters spelled out as
⟨U+XXXX⟩; the PII rule shows no `before`); a filter or dedup rule adds `dropped`, `reasons`
{reason: rows} and examples {doc key, reason, text} (dedup: also dup_of, similarity, kept_text). The language rule adds
`languages` {code: documents it saw}, and the report `languages` {code: documents kept} (most
first); the decontaminate rule adds `overlap` (documents sharing an n-gram with an evaluation
text, dropped or not), `eval_sources` (kept as the source of a frozen evaluation text) and
examples {doc key, ngram, shared_ngrams, eval_text, eval_source, dropped, text}.
Examples are the first ones in (doc_id, source, path, offset) order, whatever the sharding.
`file` is `tasks/sql/<file>` for a built-in rule and `rules_dir/<file>` for a user's rule.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from lm.fileio import read_json
from tasks.clean.config import CleanConfig

SNIPPET_CHARS = 200
_INVISIBLE = {"Cc", "Cf", "Mn", "Me", "Zl", "Zp", "Zs"}


def snippet(text: str | None, start: int = 0) -> str | None:
    """SNIPPET_CHARS of the text from `start`, with '…' where it was cut."""
    if text is None:
        return None
    start = max(0, start)
    s = text[start : start + SNIPPET_CHARS]
    return ("…" if start > 0 else "") + s + ("…" if start + SNIPPET_CHARS < len(text) else "")


def visible(s: str | None) -> str | None:
    """Spell out the characters a reader cannot see (controls, zero-width and combining marks,
    unusual spaces) as ⟨U+XXXX⟩, so that an NFC or control-character change shows in the report."""
    if s is None:
        return None
    return "".join(
        f"⟨U+{ord(ch):04X}⟩" if ch not in " \n\t" and unicodedata.category(ch) in _INVISIBLE else ch
        for ch in s
    )


def diff_snippets(before: str, after: str) -> tuple[str | None, str | None]:
    """Before/after windows that start a little ahead of the first change."""
    i = next((k for k, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), None)
    start = max(0, (min(len(before), len(after)) if i is None else i) - 40)
    return visible(snippet(before, start)), visible(snippet(after, start))


def doc_key(row: dict[str, Any]) -> dict[str, Any]:
    """A document's key: doc_id, source, path, offset."""
    return {k: row[k] for k in ("doc_id", "source", "path", "offset")}


def build_report(
    shard_results: list[dict[str, Any]],
    dedup_result: dict[str, Any],
    config: CleanConfig,
    bytes_out: int,
    ingest_duplicates: int = 0,
    languages: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Rows in/out per rule over all shards, with the first examples in document order, and the
    account of duplicates removed by ingest and by clean."""
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
            "file": rule.file,
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
            for count in ("overlap", "eval_sources"):  # decontaminate: overlap found, dropped or not
                if any(count in p for p in per):
                    entry[count] = sum(p.get(count, 0) for p in per)
            if any("languages" in p for p in per):  # language: documents per language found
                entry["languages"] = _sum_counts(p.get("languages", {}) for p in per)
            by_reason: dict[str, list[dict[str, Any]]] = {}
            for e in sorted(examples, key=example_order):
                by_reason.setdefault(e["reason"], []).append(e)
            examples = [e for reason in sorted(by_reason) for e in by_reason[reason][:k]]
        entry["examples"] = sorted(examples, key=example_order)[: k if rule.kind == "map" else None]
        rules_out.append(entry)
    for name, d in dedup_result["rules"].items():
        rule = next(r for r in config.all_rules() if r.name == name)
        entry = {
            "rule": name,
            "kind": d["kind"],
            "file": rule.file,
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
        **({"languages": _sum_counts([languages])} if languages is not None else {}),
        "rules": rules_out,
        "duplicates": duplicates_account(ingest_duplicates, rules_out),
    }


def ingest_duplicates(ingest_dir: str | Path) -> int:
    """The exact duplicates ingest removed before clean saw the documents: in its latest run, which
    reads every source (the unchanged ones too, as `already_known`), the texts identical to another
    text of the sources. (Summing the snapshots instead would count a source read twice twice.)"""
    manifest = Path(ingest_dir) / "manifest.json"
    if not manifest.is_file():
        return 0
    return int(((read_json(manifest).get("counts") or {}).get("run") or {}).get("duplicates", 0))


def duplicates_account(at_ingest: int, rules: list[dict[str, Any]]) -> dict[str, int]:
    """One account of the duplicates removed across the stages, so that the totals add up."""
    dropped = {r["rule"]: r.get("dropped", 0) for r in rules}
    account = {
        "ingest_exact": at_ingest,
        "clean_exact": dropped.get("exact_dedup", 0),
        "clean_near": dropped.get("near_dedup", 0),
    }
    account["removed"] = account["ingest_exact"] + account["clean_exact"] + account["clean_near"]
    return account


def _sum_counts(dicts) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            total[key] = total.get(key, 0) + int(n)
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def example_order(e: dict[str, Any]) -> tuple:
    """Document order, for examples whose source, path or offset may be missing."""
    return (e["doc_id"], e["source"] or "", e["path"] or "", e["offset"] if e["offset"] is not None else -1)
