"""Registering models and choosing champions, one registered model per dataset.

Each dataset (`run.dataset`) has its own registered model (`forja` for the default dataset that
`make run` trains, `forja-<dataset>` for the others: `tracking.model_name_for`) with its own
`champion` alias. A new version takes the alias only if its figure on that dataset's fixed
evaluation set beats the champion's, measured the same way: a champion scored on another set or
by another evaluation method (`lm.evaluate.METHOD`, the downstream tasks' `downstream_method`) is
re-scored on this set first. The figure is bits per byte unless `register.metric` names another
(tasks.evaluate.METRIC_DIRECTIONS: which figures, and whether lower or higher is better). A champion that
belongs to another dataset (a home from before per-dataset models, where one `forja` model served
every dataset) is not this dataset's champion: the new version replaces it, and the log says so.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import task

from flows.stages import TASK_OPTS, by_key
from forja import tracking
from lm import checkpoint as ckpt
from lm.errors import ConfigError, ForjaError
from lm.evaluate import METHOD as EVAL_METHOD
from tasks.evaluate import METRIC_DIRECTIONS, EvalConfig, evaluate_checkpoint, evaluate_downstream

log = logging.getLogger("forja.registry")
# Fault injection, for tests/stack only: with FORJA_FAULT_HOLD_UPLOAD=DIR the register task writes
# DIR/held just before it uploads the model and waits for DIR/release (the test stops the object
# store in between: the upload fails at a chosen moment, not at a raced one).
HOLD_UPLOAD_ENV = "FORJA_FAULT_HOLD_UPLOAD"


class UploadError(ForjaError):
    """The model's artifacts did not reach the artifact store; nothing was registered."""


@task(name="register", task_run_name="register", cache_key_fn=by_key, **TASK_OPTS)
def register_task(
    checkpoint: str,
    mlflow_run_id: str,
    eval_metrics: dict[str, Any],
    eval_dir: str,
    export_hf: bool,
    dataset: str,
    key: str,
    metric: str = "eval_bpb",
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
        model_uri, version = upload_and_register(mlflow_run_id, model_dir, hf_dir, name)
    decision = promote_if_better(version, eval_metrics, eval_dir, dataset, metric)
    return {"model_uri": model_uri, "model_name": name, "version": version, **decision}


def upload_and_register(run_id: str, model_dir: Path, hf_dir: Path | None, name: str) -> tuple[str, str]:
    """Log the model, check that its weights are in the artifact store, then register a version:
    a failed or partial upload raises one line naming the store and leaves no version behind."""
    _hold_upload()
    store = tracking.mlflow.get_tracking_uri()
    try:
        model_uri, _ = tracking.log_model(run_id, model_dir, hf_dir, register_as=None)
        _check_uploaded(model_uri, model_dir)
    except Exception as e:
        raise UploadError(
            f"uploading the model to the artifact store of {store} failed ({_cause(e)}); nothing was "
            f"registered: start the object store (`forja stack up`; compose: the minio service) and "
            "trigger the run again (its training is cached)"
        ) from e
    version = tracking.mlflow.register_model(model_uri, name).version
    return model_uri, str(version)


def _check_uploaded(model_uri: str, model_dir: Path) -> None:
    """The store lists the model's MLmodel and its weights, at their local size."""
    from mlflow.artifacts import list_artifacts

    where = tracking.mlflow.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    top = {a.path.rsplit("/", 1)[-1] for a in list_artifacts(artifact_uri=where)}
    if "MLmodel" not in top:
        raise ForjaError(f"{model_uri} has no MLmodel in the store")
    weights = model_dir / ckpt.MODEL_FILE
    listed = {
        a.path.rsplit("/", 1)[-1]: a.file_size
        for a in list_artifacts(artifact_uri=f"{where}/artifacts/checkpoint")
    }
    if listed.get(weights.name) != weights.stat().st_size:
        raise ForjaError(
            f"{weights.name} is {listed.get(weights.name)} bytes in the store, {weights.stat().st_size} here"
        )


def _cause(e: BaseException) -> str:
    """An upload failure in one short line: its type, its start, and the URL it names if cut off."""
    text = " ".join(str(e).split())
    urls = re.findall(r"https?://[^\s\"'\\]+", text)
    head = f"{type(e).__name__}: {text[:160]}"
    return f"{head}; URL: {urls[-1]}" if urls and urls[-1] not in head else head


def _hold_upload() -> None:
    folder = os.environ.get(HOLD_UPLOAD_ENV)
    if not folder:
        return
    (Path(folder) / "held").write_text(str(os.getpid()))
    deadline = time.time() + 600
    while not (Path(folder) / "release").exists() and time.time() < deadline:
        time.sleep(0.2)


def _same_method(champ, metrics: dict[str, Any], metric: str) -> bool:
    if metric.startswith("downstream/"):
        return champ.tags.get("downstream_method") == metrics.get("downstream_method")
    return champ.tags.get("eval_method") == metrics.get("eval_method", EVAL_METHOD)


def _champion_value(champ, metrics: dict[str, Any], eval_dir: str, metric: str) -> float:
    """The champion's `metric` on this evaluation set, by this evaluation method."""
    same_set = champ.tags.get("eval_set_digest") == metrics["eval_set_digest"]
    same_method = _same_method(champ, metrics, metric)
    if same_set and same_method and metric in champ.tags:
        return float(champ.tags[metric])
    from forja.models import local_checkpoint

    why = "another evaluation set" if not same_set else "another evaluation method"
    if metric not in champ.tags and same_set and same_method:
        why = f"no {metric} recorded"
    log.info("re-scoring champion v%s on this evaluation set (%s)", champ.version, why)
    checkpoint = local_checkpoint(f"models:/{champ.name}/{champ.version}")
    if metric.startswith("downstream/"):
        config = EvalConfig(**_downstream_config(metrics))
        figures = evaluate_downstream(checkpoint, eval_dir, config)
    else:
        figures = evaluate_checkpoint(checkpoint, eval_dir)
    if metric not in figures:
        raise ConfigError(
            f"cannot score champion v{champ.version} by register.metric={metric}: its evaluation gives no "
            "such figure (a context too short for the downstream tasks, or no items of that task in "
            "this evaluation set); choose another register.metric"
        )
    return float(figures[metric])


def _downstream_config(metrics: dict[str, Any]) -> dict[str, int]:
    """The downstream settings a run's figures were made with (from its method, `...-seedS-itemsN`)."""
    _, seed, items = metrics["downstream_method"].rsplit("-", 2)
    return {
        "downstream_seed": int(seed.removeprefix("seed")),
        "downstream_items": int(items.removeprefix("items")),
    }


def _better(value: float, other: float, metric: str) -> bool:
    return value < other if METRIC_DIRECTIONS[metric] == "lower" else value > other


def promote_if_better(
    version: str | None,
    metrics: dict[str, Any],
    eval_dir: str,
    dataset: str = "default",
    metric: str = "eval_bpb",
) -> dict[str, Any]:
    """Move the dataset's `champion` alias to `version` only if its `metric` (bits per byte by
    default; lower or higher is better as METRIC_DIRECTIONS says) beats the champion's on the same
    set, by the same method. Under a lock, so concurrent runs agree."""
    if version is None:
        return {"promoted": False, "reason": "not registered"}
    if metric not in metrics:
        raise ConfigError(
            f"register.metric={metric} was not measured by this run's evaluation (it has "
            f"{', '.join(m for m in METRIC_DIRECTIONS if m in metrics)}); choose one of those"
        )
    name = tracking.model_name_for(dataset)
    c = tracking.client()
    value = float(metrics[metric])
    tags = {
        "eval_bpb": f"{float(metrics['eval_bpb']):.6f}",
        "eval_set_digest": metrics["eval_set_digest"],
        "eval_method": metrics.get("eval_method", EVAL_METHOD),
        "dataset": dataset,
        "gate_metric": metric,
        **{m: f"{float(metrics[m]):.6f}" for m in METRIC_DIRECTIONS if m in metrics},
        **({"downstream_method": metrics["downstream_method"]} if "downstream_method" in metrics else {}),
    }
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    op, not_op = ("<", ">=") if METRIC_DIRECTIONS[metric] == "lower" else (">", "<=")
    with tracking.registry_lock():
        # under the lock: MLflow's SQL store sets a tag by a read, then an insert, so two runs'
        # first models set at once failed one of them (UNIQUE constraint, registered_model_tags)
        c.set_registered_model_tag(name, "dataset", dataset)
        champ = tracking.champion(name)
        if champ is not None and str(champ.version) == str(version):
            return {"promoted": True, "reason": "already champion", **_figures(metric, value)}
        if champ is not None and champ.tags.get("dataset", dataset) != dataset:
            reason = (
                f"champion v{champ.version} was trained on dataset {champ.tags['dataset']!r}, not {dataset!r}"
            )
            champ_value = None
        else:
            champ_value = None if champ is None else _champion_value(champ, metrics, eval_dir, metric)
            reason = (
                "first model"
                if champ is None
                else f"{metric} {value:.4f} {op} champion v{champ.version} {champ_value:.4f}"
            )
        if champ_value is None or _better(value, champ_value, metric):
            c.set_registered_model_alias(name, tracking.CHAMPION, version)
            log.info("promoted %s version %s to champion (%s)", name, version, reason)
            return {
                "promoted": True,
                "reason": reason,
                "previous_champion": champ and str(champ.version),
                **_figures(metric, champ_value),
            }
        reason = f"{metric} {value:.4f} {not_op} champion v{champ.version} {champ_value:.4f}"
        log.info("%s version %s stays a challenger (%s)", name, version, reason)
        return {
            "promoted": False,
            "reason": reason,
            "champion": str(champ.version),
            **_figures(metric, champ_value),
        }


def _figures(metric: str, champion_value: float | None) -> dict[str, Any]:
    """The decision's figures: the metric, the champion's value (and as `champion_bpb` for bpb)."""
    out = {"metric": metric, "champion_value": champion_value}
    return out | ({"champion_bpb": champion_value} if metric == "eval_bpb" else {})


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
