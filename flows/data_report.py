"""What the data stages leave for the run: the checks before training (usable text, a validation
split), the Prefect report artifacts of ingest and clean, and the ingest counts as MLflow metrics.
Shared by the pipeline's one-dataset path and the weighted mixture's per-source path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact

from flows.params import PipelineParams
from lm.errors import ConfigError
from lm.fileio import read_json


def check_usable_text(sources: list[str], ingest: dict[str, Any], clean: dict[str, Any]) -> None:
    """No text left after cleaning: say where it went (which reader or rule dropped what)."""
    c = clean.get("counts") or {}
    if c.get("rows_out", 1) > 0:
        return
    total = (ingest.get("counts") or {}).get("total") or {}
    quarantined = total.get("quarantine_by_reason") or {}
    dropped = {rule: n for rule, n in (c.get("dropped") or {}).items() if n}
    raise ConfigError(
        f"no usable text in {', '.join(sources)}: ingest stored {total.get('documents', 0):,} document(s)"
        + (f" and quarantined {sum(quarantined.values()):,} item(s) ({quarantined})" if quarantined else "")
        + f"; clean kept {c.get('rows_out', 0):,} of {c.get('rows_in', 0):,}"
        + (f" (dropped by rule: {dropped})" if dropped else "")
        + ". Give text sources (see the quarantine folder of the ingest output for why items were"
        " refused), or switch off the rule that drops them with --set 'clean.rules={\"<rule>\": false}'"
    )


def check_validation_split(params: PipelineParams, tokens: dict[str, Any]) -> None:
    """An empty validation split fails before training (it would fail at evaluation, after it)."""
    val = (tokens.get("splits") or {}).get("val") or {}
    if params.evaluate.eval_text is None and not val.get("tokens"):
        train = (tokens.get("splits") or {}).get("train") or {}
        raise ConfigError(
            f"the validation split is empty: {train.get('docs', 0):,} document(s) all went to training "
            f"(tokenize.val_fraction={params.tokenize.val_fraction}); add documents, raise "
            "tokenize.val_fraction, lower tokenize.chunk_bytes so long documents are cut into more chunks, "
            "or give an evaluation text with --set evaluate.eval_text=FILE"
        )


def report_artifacts(ds: Path, ingest: dict, clean: dict, suffix: str = "") -> None:
    """The ingest and clean counts as Prefect table artifacts (keys `ingest-report<suffix>`, ...)."""
    run = ingest.get("run") or {}
    rows = [{"item": k, "count": v} for k, v in sorted(run.items()) if isinstance(v, int | float)]
    if rows:
        create_table_artifact(
            key=f"ingest-report{suffix}", table=rows, description=f"Ingest of {ds.name}: this run's counts"
        )
    report_path = Path(clean["out"]) / "report.json"
    if report_path.is_file():
        report = read_json(report_path)
        table = []
        for rule in report.get("rules", []):
            ex = (rule.get("examples") or [{}])[0]
            table.append(
                {
                    "rule": rule.get("name"),
                    "kind": rule.get("kind"),
                    "rows_in": rule.get("rows_in"),
                    "rows_out": rule.get("rows_out"),
                    "changed": rule.get("changed"),
                    "example": json.dumps(ex, ensure_ascii=False)[:200],
                }
            )
        create_table_artifact(
            key=f"clean-report{suffix}", table=table, description=f"Cleaning rules on {ds.name}"
        )


INGEST_COUNTS = ("items", "accepted", "duplicates", "already_known", "quarantined", "legacy_encoding")


def ingest_metrics(ingest: dict[str, Any]) -> dict[str, float]:
    """The ingest counts as MLflow metrics: `data.ingest.<count>` for the ingest run that made the
    data (every input item is one of accepted, duplicates, already_known, quarantined),
    `data.ingest.quarantine.<reason>` per quarantine reason, and the snapshot's totals."""
    counts = ingest.get("counts") or {}
    run = ingest.get("run") or counts.get("run") or {}
    total = counts.get("total") or {}
    metrics = {f"data.ingest.{k}": run[k] for k in INGEST_COUNTS if k in run}
    metrics |= {f"data.ingest.quarantine.{r}": n for r, n in (run.get("quarantine_by_reason") or {}).items()}
    metrics |= {f"data.ingest.total_{k}": total[k] for k in ("documents", "quarantined") if k in total}
    return {k: float(v) for k, v in metrics.items()}


def decontam_metrics(clean: dict[str, Any]) -> dict[str, float]:
    """The decontaminate rule's counts as MLflow metrics: `data.decontaminated` (training documents
    dropped for sharing an n-gram with an evaluation text: the frozen set, flows/eval_set.py, and
    clean.eval_texts), `data.eval_overlap` (documents sharing one, dropped or not) and
    `data.eval_sources` (kept as the documents the frozen set came from)."""
    c = clean.get("counts") or {}
    metrics = {f"data.{k}": c[k] for k in ("eval_overlap", "eval_sources") if k in c}
    if "decontaminate" in (c.get("dropped") or {}):
        metrics["data.decontaminated"] = c["dropped"]["decontaminate"]
    return {k: float(v) for k, v in metrics.items()}
