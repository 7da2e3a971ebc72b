"""The dataset's frozen evaluation set in a run: frozen once, then checked against the training data
by the clean stage's decontaminate rule with no setting.

The set (FORJA_HOME/data/<dataset>/eval/eval.jsonl, tasks/evaluate.py) is made from the validation
split the first time a dataset is evaluated, so it appears after the first run's clean stage. Adding
it to clean's evaluation texts whenever it exists would give the same inputs another clean key on
the second run than on the first: an unchanged dataset would be cleaned, tokenized and trained again,
and the first run could not be reproduced. So:

- when the set is frozen, its manifest records `frozen_from`: the ingest digest of each source it was
  frozen from, and the doc ids of the documents its texts came from (tasks/clean/decontam.py's
  `frozen_sources`, decided once, on that data);
- clean checks every other ingest output against the set (`clean_config`): new documents of a
  retrain, a source added, a text of the set planted into a source. Those are cleaned after the set
  exists, so the set is in their key from their first clean on, and a re-run is Cached;
- the ingest output the set was frozen from is cleaned as before (its key never changes). Its
  validation chunks are the set; what else in it shares an n-gram with the set was trained on by
  the run that froze it, and is dropped by the first clean of any later data.

A set frozen before `frozen_from` existed is checked against every ingest output: the clean stage of
such a dataset runs once more, then is Cached again. The counts are the decontaminate rule's: in the
clean report and as MLflow metrics (`data.decontaminated`, `data.eval_overlap`, flows/data_report.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flows.params import PipelineParams
from lm.fileio import read_json
from tasks.clean import CleanConfig
from tasks.clean.decontam import FROZEN_FILE, frozen_from, frozen_sources, is_frozen_set
from tasks.evaluate import freeze_eval_set


def eval_dir_of(ds: Path) -> Path:
    """Where a dataset's frozen evaluation set lives."""
    return ds / "eval"


def clean_config(clean: CleanConfig, ds: Path, ingest: dict[str, Any]) -> dict[str, Any]:
    """The clean config for one ingest output (`ingest`: its stage summary): the run's, with the
    dataset's frozen evaluation set among the evaluation texts unless it was frozen from this very
    ingest output."""
    frozen = eval_dir_of(ds) / FROZEN_FILE
    config = clean.model_dump(mode="json")
    if not is_frozen_set(frozen) or frozen.resolve() in clean.eval_texts:
        return config
    record = frozen_from(frozen)
    if record is not None and ingest.get("digest") in (record.get("ingest") or []):
        return config
    return config | {"eval_texts": [*config["eval_texts"], str(frozen.resolve())]}


def _clean_outputs(data: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(ingest summary, clean summary) of each source of the run's data (one when not a mixture)."""
    if "sources" in data:
        return [(s["ingest"], s["clean"]) for s in data["sources"].values()]
    return [(data["ingest"], data["clean"])]


def _origin(params: PipelineParams, data: dict[str, Any]):
    """`frozen_from` of a set frozen from this run's data (see the module docstring)."""

    def origin(texts: list[str]) -> dict[str, Any]:
        sources: set[str] = set()
        if params.evaluate.eval_text is None:  # a user's text has no source documents here
            for _, clean in _clean_outputs(data):
                folder = Path(clean["out"])
                for part in read_json(folder / "manifest.json")["outputs"]:
                    table = pq.read_table(folder / part["path"], columns=["doc_id", "text"])
                    docs = list(zip(*(table.column(c).to_pylist() for c in ("doc_id", "text")), strict=True))
                    sources |= set(frozen_sources(texts, docs, params.clean.decontam_ngram))
        return {
            "ingest": sorted({ingest["digest"] for ingest, _ in _clean_outputs(data)}),
            "sources": sorted(sources),
        }

    return origin


def freeze(params: PipelineParams, data: dict[str, Any], ds: Path) -> Path:
    """Freeze the dataset's evaluation set from this run's tokens unless it is frozen; its folder."""
    folder = eval_dir_of(ds)
    freeze_eval_set(data["tokens"]["out"], folder, params.evaluate, _origin(params, data))
    return folder


__all__ = ["clean_config", "eval_dir_of", "freeze"]
