"""MLflow for Forja: one run per pipeline run, its datasets, metrics, artifacts and the model registry.

Everything goes through `MlflowClient` with explicit run ids (thread-safe: Prefect runs tasks in
worker threads), except `log_model`, which MLflow only offers in the fluent API.

Only MLflow lives here. The loss-curve plot is in `forja.plots`; nothing here touches Prefect: the
Prefect side of a vanished run (its flow run marked Crashed) is done by the flows, in
`flows/tracked_run.py`, from the `StaleRun`s that `mark_stale_runs` returns.

The champion: the registered model `forja` carries the alias `champion`. A new version takes it only
when its bits per byte on the fixed evaluation set beats the champion's on the same set; the check
and the move happen under a lock, so two retrains finishing together leave it on the better model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from forja.home import Home
from lm.fileio import file_lock

log = logging.getLogger("forja.tracking")

EXPERIMENT = "forja"
MODEL_NAME = "forja"
CHAMPION = "champion"
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


_READY: set[str] = set()  # SQLite stores this process has opened under the lock


def client() -> mlflow.MlflowClient:
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and ":memory:" not in uri and uri not in _READY:
        _open_sqlite_store(uri)
    return mlflow.MlflowClient()


def _open_sqlite_store(uri: str) -> None:
    """Create (or migrate) a SQLite store under a file lock, and switch it to WAL.

    MLflow creates the tables of an empty database on first use, without a lock: two runs starting
    together on a fresh FORJA_HOME both ran the migrations and one failed ('duplicate column name',
    'table _alembic_tmp_experiments already exists').
    WAL lets readers (the UI, the other run) go on while one process writes; MLflow's own
    busy_timeout (20 s) then covers the writers.
    """
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    with file_lock(path.with_name(path.name + ".lock")):
        con = sqlite3.connect(path, timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
        c = mlflow.MlflowClient()
        c.search_experiments(max_results=1)  # the tracking store: created (and migrated) here
        c.search_registered_models(max_results=1)  # the registry store checks the same tables
    _READY.add(uri)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return (
            out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(name: str = EXPERIMENT) -> str:
    """The experiment's id, created on first use (artifacts under the Forja home for a local store)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = Home.from_env().mlflow_artifacts.as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent run
        return c.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True)
class StaleRun:
    """A run that `mark_stale_runs` ended because its process is gone."""

    run_id: str
    flow_run_id: str | None  # the Prefect flow run it recorded (tag prefect.flow_run_id), if any


def mark_stale_runs(exp_id: str | None = None) -> list[StaleRun]:
    """End as KILLED the runs left RUNNING by a process of this host that no longer exists.

    Their Prefect flow runs, still Running too, are the caller's to mark: see flows/tracked_run.py.
    """
    c, host, ended = client(), socket.gethostname(), []
    exp_id = exp_id or experiment_id()
    for run in c.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=200):
        tags = run.data.tags
        if tags.get("forja.host") != host or "forja.pid" not in tags:
            continue
        try:
            os.kill(int(tags["forja.pid"]), 0)
            continue  # still alive
        except (OSError, ValueError):
            pass
        c.set_tag(run.info.run_id, "forja.ended_by", "stale-run cleanup: its process is gone")
        c.set_terminated(run.info.run_id, status="KILLED")
        ended.append(StaleRun(run.info.run_id, tags.get("prefect.flow_run_id") or None))
        log.warning(
            "marked MLflow run %s KILLED: process %s on %s is gone", run.info.run_id, tags["forja.pid"], host
        )
    return ended


def start_run(run_name: str, tags: dict[str, str], exp_id: str | None = None) -> str:
    """A new run tagged with this host, process and commit (the tags `mark_stale_runs` reads).

    A flow starts its run through flows/tracked_run.py, which first cleans up after vanished runs.
    """
    exp_id = exp_id or experiment_id()
    all_tags = {
        "forja.host": socket.gethostname(),
        "forja.pid": str(os.getpid()),
        "git_commit": git_commit(),
        **tags,
    }
    run = client().create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    items = [
        Param(k, json.dumps(v) if isinstance(v, dict | list) else str(v)[:MAX_PARAM_LEN])
        for k, v in sorted(params.items())
    ]
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i : i + 100])


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    ts = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), ts, step or 0) for k, v in metrics.items()])


class MetricsLogger:
    """The `on_metrics(metrics, step)` callback of lm's trainer, batching writes to MLflow."""

    def __init__(self, run_id: str, flush_every: int = 25, prefix: str = ""):
        self.run_id, self.flush_every, self.prefix = run_id, flush_every, prefix
        self.pending: list[Metric] = []
        self.lock = threading.Lock()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        with self.lock:
            self.pending += [Metric(self.prefix + k, float(v), ts, step) for k, v in metrics.items()]
            if len(self.pending) >= self.flush_every * 3 or any(k.startswith("val_") for k in metrics):
                self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        for i in range(0, len(batch), 1000):
            client().log_batch(self.run_id, metrics=batch[i : i + 1000])

    def flush(self) -> None:
        with self.lock:
            self._flush()


def log_dataset(
    run_id: str,
    name: str,
    digest: str,
    path: str | os.PathLike,
    context: str,
    profile: dict[str, Any] | None = None,
) -> None:
    """Record a dataset input (name, digest, where it lives) so runs show whether they saw the same data."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset

    with warnings.catch_warnings():  # a local folder matches two equivalent local source types
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(str(Path(path).resolve()))
    entity = Dataset(
        name=name,
        digest=digest[:36],
        source_type=source._get_source_type(),
        source=source.to_json(),
        profile=json.dumps(profile) if profile else None,
    )
    client().log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
    )


def log_artifact(run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    else:
        client().log_artifact(run_id, str(path), artifact_path)


def log_json(run_id: str, obj: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        client().log_artifact(run_id, str(p))


def log_text(run_id: str, text: str, name: str) -> None:
    client().log_text(run_id, text, name)


PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 0}


def log_model(
    run_id: str,
    checkpoint_dir: str | os.PathLike,
    hf_dir: str | os.PathLike | None = None,
    register_as: str | None = MODEL_NAME,
) -> tuple[str, str | None]:
    """Log the model as an MLflow pyfunc (weights as safetensors + tokenizer + lm code) and register it.

    The pyfunc is "models from code": loading it imports `forja/pyfunc_model.py` and `lm/`, and reads
    safetensors; nothing is unpickled. Returns (model URI, registered version or None).
    """
    import pandas as pd

    import lm

    artifacts = {"checkpoint": str(checkpoint_dir)}
    if hf_dir is not None:
        artifacts["hf"] = str(hf_dir)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            code_paths=[str(Path(lm.__file__).parent)],
            input_example=(pd.DataFrame({"prompt": ["To be, or not to be"]}), dict(GENERATION_DEFAULTS)),
            registered_model_name=register_as,
            pip_requirements=["torch", "numpy", "safetensors", "sentencepiece", "pandas"],
        )
    version = str(info.registered_model_version) if info.registered_model_version is not None else None
    return info.model_uri, version


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Serialise champion decisions between processes on this machine (a file lock in the Forja home).

    With a remote tracking server and workers on several hosts, run promotions from one deployment
    (the retrain flow has a concurrency limit of one in infra/prefect.yaml) for the same guarantee.
    """
    with file_lock(Home.from_env().root / "registry.lock"):
        yield


def model_name_for(dataset: str) -> str:
    """The registered model of a dataset: each dataset has its own, with its own champion alias.
    The default dataset (what `make run` trains) keeps the plain name, `forja`."""
    return MODEL_NAME if dataset == "default" else f"{MODEL_NAME}-{dataset}"


def list_models() -> list[dict[str, Any]]:
    """Every registered model of the store: name, dataset, champion version and its evaluation
    bits per byte, the champion's URI, the number of versions."""
    c = client()
    rows = []
    for rm in c.search_registered_models(max_results=1000, order_by=["name ASC"]):
        champ = champion(rm.name)
        versions = c.search_model_versions(f"name = '{rm.name}'", max_results=10000)
        dataset = rm.tags.get("dataset") or (champ.tags.get("dataset") if champ else None)
        rows.append(
            {
                "name": rm.name,
                "dataset": dataset,
                "champion_version": int(champ.version) if champ else None,
                "eval_bpb": float(champ.tags["eval_bpb"]) if champ and "eval_bpb" in champ.tags else None,
                "uri": f"models:/{rm.name}@{CHAMPION}" if champ else None,
                "versions": len(versions),
            }
        )
    return rows


def champion(model_name: str = MODEL_NAME):
    """The champion's model version, or None."""
    try:
        return client().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


__all__ = [
    "CHAMPION",
    "MODEL_NAME",
    "MetricsLogger",
    "StaleRun",
    "champion",
    "end_run",
    "experiment_id",
    "list_models",
    "log_artifact",
    "log_dataset",
    "log_json",
    "log_metrics",
    "log_model",
    "log_params",
    "mark_stale_runs",
    "model_name_for",
    "registry_lock",
    "set_tags",
    "start_run",
]
