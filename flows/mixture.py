"""The data of a weighted mixture (`--source NAME=PATH[:WEIGHT] ...`): each source kept apart, one
tokenizer over them all, and a mixture folder that training reads.

Why a stage run per source rather than a source column carried through: every stage stays exactly
as it is (its key, cache, manifest and report), each source's counts and digests come for free, and
a source that did not change is Cached on its own. Per source, in FORJA_HOME/data/<dataset>/sources/<NAME>/:

    ingest/                the source's documents (incremental, as a one-dataset ingest)
    clean/<key>/           its clean output and report (dedup is within the source)
    tokens/<key>/          its token shards, encoded with the mixture's tokenizer

then FORJA_HOME/data/<dataset>/mixtures/tokenizers/<key>/tokenizer.model, the one SentencePiece
model, trained on a sample of each source's clean text in proportion to its weight (or the
tokenizer given with tokenize.tokenizer, as retrain gives the champion's), and
FORJA_HOME/data/<dataset>/mixtures/<digest>/, the mixture folder (lm/mixture.py) naming each
source's token folder and weight. Its digest, of the sources' digests and weights, keys training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect import task

from flows.data_report import check_usable_text, decontam_metrics, ingest_metrics, report_artifacts
from flows.eval_set import clean_config
from flows.params import PipelineParams, recorded
from flows.sources import SourceSpec
from flows.stages import duplicate_metrics, run_clean_stage, run_ingest_stage, run_tokenize_stage
from forja import tracking
from lm.fileio import read_json, sha256_json
from lm.mixture import normalise, write_mixture
from tasks.stage import files_digest, module_files
from tasks.tokenize import TokenizeConfig, train_mixture_tokenizer

SOURCES_TAG = "data.sources"  # the run's sources as given (URL credentials redacted): retrain reuses them


@task(name="tokenizer", task_run_name="mixture-tokenizer", persist_result=False)
def mixture_tokenizer_task(sources: list[tuple[str, str, float]], out: str, config: dict[str, Any]) -> str:
    """Train the mixture's tokenizer into OUT (a folder named after its key) unless it is there."""
    path = Path(out) / "tokenizer.model"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_mixture_tokenizer(sources, path.parent, TokenizeConfig.model_validate(config))
    return str(path)


def _tokenizer_for(
    params: PipelineParams, cleans: dict[str, dict[str, Any]], weights: dict[str, float], ds: Path
) -> TokenizeConfig:
    """The tokenize config every source is encoded with: the given tokenizer, or the mixture's."""
    if params.tokenize.tokenizer is not None:
        return params.tokenize
    config = params.tokenize.model_dump(mode="json")
    key = sha256_json(
        {
            "sources": [[n, c["digest"], weights[n]] for n, c in cleans.items()],
            "config": {k: v for k, v in config.items() if k not in ("shard_tokens", "num_threads")},
            "code": files_digest(module_files("tasks.tokenize")),
        }
    )
    sources = [(n, c["out"], weights[n]) for n, c in cleans.items()]
    path = mixture_tokenizer_task(sources, str(ds / "mixtures" / "tokenizers" / key[:16]), config)
    return params.tokenize.model_copy(update={"tokenizer": Path(path)})


def prepare_mixture(params: PipelineParams, ds: Path, mixture: list[SourceSpec]) -> dict[str, Any]:
    """ingest -> clean per source, the mixture's tokenizer, tokenize per source, the mixture folder."""
    fresh = params.run.fresh
    weights = dict(zip((s.name for s in mixture), normalise([s.weight for s in mixture]), strict=True))
    ingests, cleans = {}, {}
    for spec in mixture:
        folder = ds / "sources" / spec.name
        ingests[spec.name] = run_ingest_stage(
            list(spec.paths),
            folder / "ingest",
            params.ingest_for(spec.name).model_dump(mode="json"),
            fresh,
        )
        clean_cfg = clean_config(params.clean_for(spec.name), ds, ingests[spec.name])  # + the frozen set
        cleans[spec.name] = run_clean_stage(folder / "ingest", folder, clean_cfg, fresh)
        check_usable_text(list(spec.paths), ingests[spec.name], cleans[spec.name])
        report_artifacts(folder, ingests[spec.name], cleans[spec.name], suffix="-" + _slug(spec.name))
    tok_cfg = _tokenizer_for(params, cleans, weights, ds).model_dump(mode="json")
    tokens = {
        s.name: run_tokenize_stage(Path(cleans[s.name]["out"]), ds / "sources" / s.name, tok_cfg, fresh)
        for s in mixture
    }
    out = write_mixture(ds / "mixtures", [(s.name, weights[s.name], tokens[s.name]["out"]) for s in mixture])
    manifest = read_json(out / "manifest.json")
    return {
        "ingest": {
            "digest": sha256_json({n: i["digest"] for n, i in ingests.items()}),
            "changed": any(i.get("changed", True) for i in ingests.values()),
        },
        "clean": {"digest": sha256_json({n: c["digest"] for n, c in cleans.items()})},
        "tokens": {
            "out": str(out),
            "stage": "mixture",
            "digest": manifest["digest"],
            "splits": manifest["splits"],
            "tokenizer_sha256": manifest["tokenizer_sha256"],
        },
        "sources": {
            s.name: {
                "weight": weights[s.name],
                "ingest": ingests[s.name],
                "clean": cleans[s.name],
                "tokens": tokens[s.name],
            }
            for s in mixture
        },
    }


def _slug(name: str) -> str:
    """A source name as a Prefect artifact key may hold it (lower-case letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower())


def log_mixture_data(run_id: str, params: PipelineParams, data: dict[str, Any]) -> None:
    """The mixture in MLflow: one dataset input per source (`tokens/<NAME>`, its token folder's
    digest, weight and splits) and one for the mixture (`tokens`), each source's manifests and
    clean report, token and ingest counts per source, and the sources as given (for retrain)."""
    tokens = data["tokens"]
    weights = {n: s["weight"] for n, s in data["sources"].items()}
    profile = {"weights": weights, "splits": tokens["splits"]}
    tracking.log_dataset(run_id, "tokens", tokens["digest"], tokens["out"], "training", profile=profile)
    metrics: dict[str, float] = {f"data.{s}_tokens": float(v["tokens"]) for s, v in tokens["splits"].items()}
    for name, src in data["sources"].items():
        t = src["tokens"]
        splits = {s: {k: v for k, v in i.items() if k != "shards"} for s, i in t.get("splits", {}).items()}
        tracking.log_dataset(
            run_id,
            f"tokens/{name}",
            t["digest"],
            t["out"],
            "training",
            profile={"weight": src["weight"], **splits},
        )
        for stage in ("ingest", "clean", "tokens"):
            tracking.log_artifact(run_id, Path(src[stage]["out"]) / "manifest.json", f"data/{name}/{stage}")
        if (report := Path(src["clean"]["out"]) / "report.json").is_file():
            tracking.log_artifact(run_id, report, f"data/{name}/clean")
        metrics |= {f"data.{name}.{s}_tokens": float(v["tokens"]) for s, v in splits.items()}
        per_source = ingest_metrics(src["ingest"]) | duplicate_metrics(src["clean"])
        metrics |= {k.replace("data.", f"data.{name}.", 1): v for k, v in per_source.items()}
        for k, v in decontam_metrics(src["clean"]).items():  # per source, and in all
            metrics[k.replace("data.", f"data.{name}.", 1)] = v
            metrics[k] = metrics.get(k, 0.0) + v
    tracking.log_metrics(run_id, metrics)
    tracking.log_artifact(run_id, Path(tokens["out"]) / "tokenizer.model", "tokenizer")
    tracking.set_tags(
        run_id,
        {
            "data.tokens_digest": tokens["digest"],
            "data.clean_digest": data["clean"]["digest"],
            "data.ingest_digest": data["ingest"]["digest"],
            "tokenizer_sha256": tokens["tokenizer_sha256"],
            "data.mixture": json.dumps(weights),
            SOURCES_TAG: json.dumps(recorded(params)["sources"]),
        },
    )


def champion_sources(dataset: str) -> list[str] | None:
    """The sources the champion of `dataset` was trained on, when they were a mixture (as given,
    URL credentials redacted: those come from the environment again)."""
    champ = tracking.champion(tracking.model_name_for(dataset))
    if champ is None or not champ.run_id:
        return None
    tag = tracking.client().get_run(champ.run_id).data.tags.get(SOURCES_TAG)
    return json.loads(tag) if tag else None


__all__ = ["champion_sources", "log_mixture_data", "prepare_mixture"]
