"""Registering models and choosing champions, one registered model per dataset.

Each dataset (`run.dataset`) has its own registered model (`forja` for the default dataset that
`make run` trains, `forja-<dataset>` for the others: `tracking.model_name_for`) with its own
`champion` alias. A new version takes the alias only if its bits per byte on that dataset's fixed
evaluation set beats the champion's, measured the same way: a champion scored on another set or
by another evaluation method (`lm.evaluate.METHOD`) is re-scored on this set first. A champion that
belongs to another dataset (a home from before per-dataset models, where one `forja` model served
every dataset) is not this dataset's champion: the new version replaces it, and the log says so.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from flows.stages import TASK_OPTS, by_key
from forja import tracking
from lm import checkpoint as ckpt
from lm.evaluate import METHOD as EVAL_METHOD
from tasks.evaluate import evaluate_checkpoint

log = logging.getLogger("forja.registry")


@task(name="register", task_run_name="register", cache_key_fn=by_key, **TASK_OPTS)
def register_task(
    checkpoint: str,
    mlflow_run_id: str,
    eval_metrics: dict[str, Any],
    eval_dir: str,
    export_hf: bool,
    dataset: str,
    key: str,
) -> dict[str, Any]:
    """Log the model to MLflow (pyfunc + HF folder), register a version of the dataset's model,
    promote it if it is better."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = ckpt.export_for_inference(checkpoint, Path(tmp) / "checkpoint")
        hf_dir = None
        if export_hf:
            from forja.hf import export_hf

            try:
                hf_dir = Path(export_hf(str(model_dir), Path(tmp) / "hf", verify=False)["out"])
            except Exception as e:  # an LSTM, say: the model is still logged, without the HF folder
                log.warning("no Hugging Face export for this model: %s", e)
        name = tracking.model_name_for(dataset)
        model_uri, version = tracking.log_model(mlflow_run_id, model_dir, hf_dir, register_as=name)
    decision = promote_if_better(version, eval_metrics, eval_dir, dataset)
    return {"model_uri": model_uri, "model_name": name, "version": version, **decision}


def _champion_bpb(champ, metrics: dict[str, Any], eval_dir: str) -> float:
    """The champion's bits per byte on this evaluation set, by this evaluation method."""
    same_set = champ.tags.get("eval_set_digest") == metrics["eval_set_digest"]
    same_method = champ.tags.get("eval_method") == metrics.get("eval_method", EVAL_METHOD)
    if same_set and same_method and "eval_bpb" in champ.tags:
        return float(champ.tags["eval_bpb"])
    from forja.models import local_checkpoint

    why = "another evaluation set" if not same_set else "another evaluation method"
    log.info("re-scoring champion v%s on this evaluation set (its figure was made on %s)", champ.version, why)
    return evaluate_checkpoint(local_checkpoint(f"models:/{champ.name}/{champ.version}"), eval_dir)[
        "eval_bpb"
    ]


def promote_if_better(
    version: str | None, metrics: dict[str, Any], eval_dir: str, dataset: str = "default"
) -> dict[str, Any]:
    """Move the dataset's `champion` alias to `version` only if its eval bits per byte beats the
    champion's on the same set, by the same method. Under a lock, so concurrent runs agree."""
    if version is None:
        return {"promoted": False, "reason": "not registered"}
    name = tracking.model_name_for(dataset)
    c = tracking.client()
    bpb = float(metrics["eval_bpb"])
    tags = {
        "eval_bpb": f"{bpb:.6f}",
        "eval_set_digest": metrics["eval_set_digest"],
        "eval_method": metrics.get("eval_method", EVAL_METHOD),
        "dataset": dataset,
    }
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    c.set_registered_model_tag(name, "dataset", dataset)
    with tracking.registry_lock():
        champ = tracking.champion(name)
        if champ is not None and str(champ.version) == str(version):
            return {"promoted": True, "reason": "already champion", "champion_bpb": bpb}
        if champ is not None and champ.tags.get("dataset", dataset) != dataset:
            reason = (
                f"champion v{champ.version} was trained on dataset {champ.tags['dataset']!r}, not {dataset!r}"
            )
            champ_bpb = None
        else:
            champ_bpb = None if champ is None else _champion_bpb(champ, metrics, eval_dir)
            reason = (
                "first model" if champ is None else f"{bpb:.4f} < champion v{champ.version} {champ_bpb:.4f}"
            )
        if champ_bpb is None or bpb < champ_bpb:
            c.set_registered_model_alias(name, tracking.CHAMPION, version)
            log.info("promoted %s version %s to champion (%s)", name, version, reason)
            return {
                "promoted": True,
                "reason": reason,
                "previous_champion": champ and str(champ.version),
                "champion_bpb": champ_bpb,
            }
        reason = f"{bpb:.4f} >= champion v{champ.version} {champ_bpb:.4f}"
        log.info("%s version %s stays a challenger (%s)", name, version, reason)
        return {
            "promoted": False,
            "reason": reason,
            "champion": str(champ.version),
            "champion_bpb": champ_bpb,
        }


def current_champion(dataset: str) -> dict[str, Any] | None:
    """The dataset's champion as the registry says now (read after any decision, on cached runs
    too): what the run's summary reports."""
    name = tracking.model_name_for(dataset)
    champ = tracking.champion(name)
    if champ is None:
        return None
    bpb = champ.tags.get("eval_bpb")
    return {
        "model_name": name,
        "version": str(champ.version),
        "eval_bpb": float(bpb) if bpb is not None else None,
        "uri": f"models:/{name}@{tracking.CHAMPION}",
    }
