"""The `pipeline` flow: ingest -> clean -> tokenize -> train -> evaluate -> register.

One MLflow run per flow run records every resolved parameter, the datasets (with digests), the
training and validation metrics, system metrics, reports, samples, the loss curve and the model.
The data stages run in a sub-flow whose task runner is a parameter (threads, or a Dask cluster);
training, evaluation and registration are tasks keyed on content, so an unchanged re-run is Cached
from end to end and a re-triggered run resumes training from its last checkpoint.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.context import TaskRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows import eval_set, forja_flow, report_card
from flows.data_report import (
    check_usable_text,
    check_validation_split,
    decontam_metrics,
    ingest_metrics,
    report_artifacts,
)
from flows.launch import torchrun as launch_torchrun
from flows.mixture import log_mixture_data, prepare_mixture
from flows.mlflow_run import tracked_run
from flows.model_stages import stage_key
from flows.params import (
    EvalConfig,
    PipelineParams,
    RunParams,
    flatten,
    recorded,
    takes_pipeline_parameters,
)
from flows.registry import current_champion, register_task
from flows.stages import (
    TASK_OPTS,
    by_key,
    duplicate_metrics,
    is_cached,
    run_clean_stage,
    run_ingest_stage,
    run_tokenize_stage,
)
from forja import session, tracking
from forja.home import Home
from forja.plots import loss_curve_png
from lm import checkpoint as ckpt
from lm.config import ModelConfig, TrainConfig, from_dict, to_dict
from lm.errors import ForjaError
from lm.fileio import atomic_write_json, read_json, sha256_file
from lm.train import train as lm_train
from tasks.common import read_manifest
from tasks.evaluate import (
    downstream_markdown_rows,
    evaluate_checkpoint,
    evaluate_downstream,
    sample_texts,
)

log = logging.getLogger("forja.pipeline")

PARAMS_FILE = "pipeline.json"  # the run folder's record of the parameters that made it
started_run_dirs: list[Path] = []  # run folders this process started training in (for a resume hint)


def make_task_runner(run: RunParams):
    if run.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if run.dask_address:
            return DaskTaskRunner(address=run.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": run.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return ThreadPoolTaskRunner(max_workers=run.workers)


# ------------------------------------------------------------------ data


@forja_flow("prepare-data")
def prepare_data(params: PipelineParams) -> dict[str, Any]:
    """ingest -> clean -> tokenize for one dataset; each stage mapped over its shards. A weighted
    mixture runs them per source (flows/mixture.py); check_validation_split checks the whole."""
    home = Home.from_env()
    ds = home.dataset(params.run.dataset)
    params.check_source_settings()  # the sources are final here (retrain: the champion's)
    if (mixture := params.mixture()) is not None:  # named sources: kept apart, mixed by weight
        data = prepare_mixture(params, ds, mixture)
        check_validation_split(params, data["tokens"])
        return data
    fresh = params.run.fresh
    ingest = run_ingest_stage(params.sources, ds / "ingest", params.ingest.model_dump(mode="json"), fresh)
    clean = run_clean_stage(ds / "ingest", ds, eval_set.clean_config(params.clean, ds, ingest), fresh)
    check_usable_text(params.sources, ingest, clean)
    tokens = run_tokenize_stage(Path(clean["out"]), ds, params.tokenize.model_dump(mode="json"), fresh)
    check_validation_split(params, tokens)
    report_artifacts(ds, ingest, clean)
    return {"ingest": ingest, "clean": clean, "tokens": tokens}


# ------------------------------------------------------------------ train / evaluate / register


class _Progress:
    """Training progress as a Prefect progress artifact, updated from a thread of its own.

    Training needs no API: an update never blocks a step, and an API outage costs updates (one
    warning, and a line when they resume), not the run. Only the newest value waits to be sent;
    `close()` sends the last one (waiting a few seconds at most) and stops the thread.
    """

    EVERY_S = 10.0
    MIN_S = 1.0  # a short run stepping many times a second: each update costs the server's CPU too

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.last, self.last_at = -1.0, time.monotonic()
        self.latest: float | None = 0.0  # the value waiting to be sent
        self.closing = False
        self.give_up_at = float("inf")
        self.failing = False
        self.artifact_id = None
        self.cond = threading.Condition()
        context = contextvars.copy_context()  # the flow run's Prefect settings and client
        self.thread = threading.Thread(target=context.run, args=(self._send_loop,), daemon=True)
        self.thread.start()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        pct = min(100.0, round(100.0 * step / self.total_steps, 1))
        now = time.monotonic()
        since = now - self.last_at
        # every 2 % (MIN_S apart at least), the last step, and every EVERY_S (a run that stops by time)
        if (
            (pct - self.last >= 2.0 and since >= self.MIN_S)
            or step == self.total_steps
            or since >= self.EVERY_S
        ):
            self.last, self.last_at = pct, now
            with self.cond:
                self.latest = pct  # an older value not sent yet is replaced
                self.cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.closing = True
            self.give_up_at = time.monotonic() + timeout
            self.cond.notify()
        self.thread.join(timeout)

    def _send_loop(self) -> None:
        while True:
            with self.cond:
                while self.latest is None and not self.closing:
                    self.cond.wait()
                if self.latest is None:
                    return  # closing, everything sent
                pct, self.latest = self.latest, None
            try:
                self._send(pct)
            except Exception as e:
                if not self.failing:
                    log.warning(
                        "progress updates paused, the Prefect API did not answer (%s); training goes on", e
                    )
                self.failing = True
                with self.cond:
                    if self.closing and time.monotonic() > self.give_up_at:
                        return
                    if self.latest is None:  # try this value again, unless a newer one came
                        self.latest = pct
                time.sleep(5)

    def _send(self, pct: float) -> None:
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                progress=pct, key="training-progress", description="Training progress (% of max_steps)"
            )
        else:
            update_progress_artifact(artifact_id=self.artifact_id, progress=pct)
        if self.failing:
            log.info("the Prefect API answers again: progress updates resumed at %.1f%%", pct)
        self.failing = False


@task(name="train", task_run_name="train", cache_key_fn=by_key, **TASK_OPTS)
def train_task(
    tokens_dir: str,
    run_dir: str,
    config: dict[str, Any],
    init_from: str | None,
    launch: dict[str, Any],
    mlflow_run_id: str | None,
    key: str,
) -> dict[str, Any]:
    """Train, or resume the run folder from its last complete checkpoint (idempotent by run folder).

    `launch`: the run's processes and nodes (RunParams's nproc, nnodes, node_rank, rdzv_endpoint)."""
    model_cfg, train_cfg = from_dict(config)
    run = RunParams.model_validate(launch)
    metrics_logger = tracking.MetricsLogger(mlflow_run_id) if mlflow_run_id else None
    progress = _Progress(train_cfg.max_steps) if TaskRunContext.get() else None  # only in a Prefect run

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        if progress:
            progress(metrics, step)
        if metrics_logger:
            metrics_logger(metrics, step)

    if run.nproc > 1 or run.nnodes > 1:
        launch_torchrun(run, key[:32], tokens_dir, run_dir, model_cfg, train_cfg, mlflow_run_id)
        final = ckpt.latest_checkpoint(run_dir)
        if final is None:
            raise ForjaError(
                f"{run_dir} holds no checkpoint after training: global rank 0 ran on another node; "
                "give run.out a folder on storage every node sees"
            )
        result = {
            "step": ckpt.read_state(final)["step"],
            "metrics": ckpt.read_state(final).get("metrics", {}),
        }
    else:
        r = lm_train(
            model_cfg,
            train_cfg,
            tokens_dir,
            run_dir,
            resume=True,
            on_metrics=on_metrics,
            init_from=init_from,
            should_stop=session.reraise_lost_interrupt,  # a no-op outside `forja run`'s interrupts()
        )
        final, result = r.checkpoint, {"step": r.step, "metrics": r.metrics}
    if progress:
        progress.close()
    if metrics_logger:
        metrics_logger.flush()
    return {
        "run_dir": run_dir,
        "checkpoint": str(final),
        **result,
        "checkpoint_sha256": sha256_file(Path(final) / ckpt.MODEL_FILE),
    }


@task(name="evaluate", task_run_name="evaluate", cache_key_fn=by_key, **TASK_OPTS)
def evaluate_task(checkpoint: str, eval_dir: str, config: dict[str, Any], key: str) -> dict[str, Any]:
    cfg = EvalConfig.model_validate(config)
    metrics = evaluate_checkpoint(checkpoint, eval_dir) | evaluate_downstream(checkpoint, eval_dir, cfg)
    return {"metrics": metrics, "samples": sample_texts(checkpoint, cfg)}


# ------------------------------------------------------------------ the whole run


def run_dir_for(params: PipelineParams, key: str) -> Path:
    if params.run.out is not None:
        return Path(params.run.out).resolve()
    return Home.from_env().runs / f"{params.run.dataset}-{params.preset}-{key[:12]}"


def _log_data(run_id: str, data: dict[str, Any]) -> None:
    tracking.log_dataset(
        run_id,
        "clean",
        data["clean"]["digest"],
        data["clean"]["out"],
        "training",
        profile=data["clean"].get("counts"),
    )
    tokens = data["tokens"]
    splits = {
        s: {k: v for k, v in info.items() if k != "shards"} for s, info in tokens.get("splits", {}).items()
    }
    tracking.log_dataset(run_id, "tokens", tokens["digest"], tokens["out"], "training", profile=splits)
    tracking.set_tags(
        run_id,
        {
            "data.clean_digest": data["clean"]["digest"],
            "data.tokens_digest": tokens["digest"],
            "data.ingest_digest": data["ingest"]["digest"],
            "tokenizer_sha256": tokens.get("tokenizer_sha256", ""),
        },
    )
    for name, folder in (
        ("ingest", data["ingest"]["out"]),
        ("clean", data["clean"]["out"]),
        ("tokens", tokens["out"]),
    ):
        tracking.log_artifact(run_id, Path(folder) / "manifest.json", f"data/{name}")
    report = Path(data["clean"]["out"]) / "report.json"
    if report.is_file():
        tracking.log_artifact(run_id, report, "data/clean")
    tracking.log_artifact(run_id, Path(tokens["out"]) / "tokenizer.model", "tokenizer")
    tracking.log_metrics(run_id, {f"data.{s}_tokens": float(v["tokens"]) for s, v in splits.items()})
    tracking.log_metrics(
        run_id,
        ingest_metrics(data["ingest"]) | duplicate_metrics(data["clean"]) | decontam_metrics(data["clean"]),
    )


def _init_weights(init_from: str | None) -> tuple[str | None, str | None]:
    """The local checkpoint to start training from (a run folder or models:/ URI), and its digest."""
    if not init_from:
        return None, None
    from forja.models import local_checkpoint

    init_from = str(local_checkpoint(init_from))
    return init_from, sha256_file(ckpt.resolve_checkpoint(init_from) / ckpt.MODEL_FILE)


def train_step(
    params: PipelineParams, data: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, run_id: str
) -> tuple[Path, dict[str, Any]]:
    """Train on the token folder (or take the cached training) and record it: the run folder and
    the train task's result."""
    from lm.data import TokenData
    from lm.train import resolve_configs

    tokens_dir = data["tokens"]["out"]
    model_cfg, train_cfg = resolve_configs(model_cfg, train_cfg, TokenData.open(tokens_dir))
    config = to_dict(model_cfg, train_cfg)
    init_from, init_digest = _init_weights(params.run.init_from)
    # A folder the user chose is part of what is asked for: a cached training elsewhere does not
    # put a model there. (The default folder is named after the key, so it needs no mention.)
    out = str(Path(params.run.out).resolve()) if params.run.out is not None else None
    key = stage_key("train", data["tokens"]["digest"], config, init_from=init_digest, out=out)
    run_dir = run_dir_for(params, key)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / PARAMS_FILE, recorded(params))  # no URL credentials on disk
    started_run_dirs.append(run_dir)
    tracking.log_params(run_id, flatten(params, model_cfg, train_cfg))
    tracking.log_json(run_id, {"params": recorded(params), "resolved": config}, "config.json")
    tracking.set_tags(run_id, {"run_dir": str(run_dir), "train_key": key})
    cached_train = is_cached(key) and not params.run.fresh
    trained = train_task.with_options(refresh_cache=params.run.fresh)(
        tokens_dir,
        str(run_dir),
        config,
        init_from,
        params.run.model_dump(include={"nproc", "nnodes", "node_rank", "rdzv_endpoint"}),
        None if cached_train else run_id,  # a cached training logs no metrics again
        key=key,
    )
    _log_training(run_id, run_dir, trained, init_digest)
    return run_dir, trained


def _log_training(run_id: str, run_dir: Path, trained: dict[str, Any], init_digest: str | None) -> None:
    tracking.set_tags(
        run_id,
        {
            "checkpoint_sha256": trained["checkpoint_sha256"],
            **({"init_from_sha256": init_digest} if init_digest else {}),
        },
    )
    final = {f"final_{k}": v for k, v in trained["metrics"].items()}
    tracking.log_metrics(run_id, final, trained["step"])
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        tracking.log_artifact(run_id, loss_curve_png(metrics_file, run_dir / "loss_curve.png"))
        tracking.log_artifact(run_id, metrics_file)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]
    eval_dir: Path  # the dataset's fixed evaluation set
    eval_digest: str


def evaluate_step(
    params: PipelineParams, data: dict[str, Any], trained: dict[str, Any], run_id: str
) -> Evaluation:
    """Evaluate the trained model on the dataset's fixed evaluation set (frozen on first use,
    flows/eval_set.py) and record the metrics and samples."""
    eval_dir = eval_set.freeze(params, data, Home.from_env().dataset(params.run.dataset))
    eval_digest = read_manifest(eval_dir, "eval-set")["digest"]
    ekey = stage_key(
        "evaluate",
        trained["checkpoint_sha256"],
        params.evaluate.model_dump(mode="json"),
        eval_set=eval_digest,
    )
    evaluated = evaluate_task(
        trained["checkpoint"], str(eval_dir), params.evaluate.model_dump(mode="json"), key=ekey
    )
    ev = evaluated["metrics"]
    tracking.log_metrics(run_id, {k: v for k, v in ev.items() if isinstance(v, int | float)}, trained["step"])
    tracking.set_tags(run_id, {"eval_set_digest": eval_digest})
    tracking.log_text(run_id, "\n\n---\n\n".join(s["text"] for s in evaluated["samples"]), "samples.txt")
    return Evaluation(ev, evaluated["samples"], eval_dir, eval_digest)


def register_step(
    params: PipelineParams, trained: dict[str, Any], evaluation: Evaluation, run_id: str
) -> dict[str, Any]:
    """Log and register the model in MLflow; the champion alias moves only to a better model."""
    metric = params.register.metric  # in the key only when not the default (older keys stay valid)
    rkey = stage_key(
        "register",
        trained["checkpoint_sha256"],
        {"export_hf": params.run.export_hf, **({"metric": metric} if metric != "eval_bpb" else {})},
        eval_set=evaluation.eval_digest,
        tracking_uri=tracking.mlflow.get_tracking_uri(),
        model=tracking.model_name_for(params.run.dataset),
    )
    registered = register_task(
        trained["checkpoint"],
        run_id,
        evaluation.metrics,
        str(evaluation.eval_dir),
        params.run.export_hf,
        params.run.dataset,
        key=rkey,
        metric=metric,
    )
    tracking.set_tags(
        run_id, {"model_version": registered.get("version"), "promoted": registered.get("promoted")}
    )
    return registered


def _nothing_new(run_id: str, data: dict[str, Any]) -> dict[str, Any]:
    msg = "no new documents in the sources: nothing to retrain"
    log.info(msg)
    tracking.set_tags(run_id, {"forja.outcome": "nothing new"})
    create_markdown_artifact(key="retrain-summary", markdown=f"**{msg}**")
    return {"status": "unchanged", "mlflow_run_id": run_id, "data": data}


def run_pipeline(
    params: PipelineParams,
    *,
    kind: str = "pipeline",
    stop_if_unchanged: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The body shared by `pipeline` and `retrain`: validate, data, train, evaluate, register."""
    model_cfg, train_cfg = params.validate_all()  # before any work: a bad parameter fails at once
    with tracked_run(params, kind, extra_tags) as run_id:
        data = prepare_data.with_options(task_runner=make_task_runner(params.run))(params)
        if stop_if_unchanged and not data["ingest"].get("changed", True):
            return _nothing_new(run_id, data)
        if "sources" in data:
            log_mixture_data(run_id, params, data)
        else:
            _log_data(run_id, data)
        run_dir, trained = train_step(params, data, model_cfg, train_cfg, run_id)
        evaluation = evaluate_step(params, data, trained, run_id)
        # of several nodes, node 0 registers the model they trained together
        register = params.run.register_model and params.run.node_rank == 0
        registered = register_step(params, trained, evaluation, run_id) if register else {}
        champion = current_champion(params.run.dataset)  # the registry's word, cached run or not
        report_card.publish_report(params, run_id, registered)  # MLflow, model version, Prefect
        create_markdown_artifact(
            key="evaluation",
            markdown=_eval_markdown(params, trained, evaluation, registered, champion),
            description="Evaluation on the fixed evaluation set",
        )
        return {
            "status": "trained",
            "mlflow_run_id": run_id,
            "run_dir": str(run_dir),
            "data": data,
            "train": trained,
            "eval": evaluation.metrics,
            "samples": evaluation.samples,
            "registered": registered,
            "champion": champion,
        }


def _eval_markdown(
    params: PipelineParams,
    trained: dict[str, Any],
    evaluation: Evaluation,
    registered: dict[str, Any],
    champion: dict[str, Any] | None,
) -> str:
    """The Prefect artifact of a finished run: its evaluation, its registration, its samples."""
    ev = evaluation.metrics
    downstream = downstream_markdown_rows(ev)
    samples_md = "\n\n".join(f"**{s['prompt']!r}** → {s['text']!r}" for s in evaluation.samples)
    reg = ""
    if registered:
        reg = f"\n| model version | {registered.get('model_name')} v{registered.get('version')} |"
    if champion:
        bpb = f"{champion['eval_bpb']:.4f}" if champion["eval_bpb"] is not None else "?"
        reg += f"\n| champion now | {champion['model_name']} v{champion['version']} ({bpb} bits per byte) |"
    return (
        f"## {params.run.dataset} · preset `{params.preset}` · step {trained['step']}\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| loss (nats/token) | {ev['eval_loss']:.4f} |\n| perplexity | {ev['eval_perplexity']:.2f} |\n"
        f"| bits per byte | {ev['eval_bpb']:.4f} |\n| evaluated bytes | {ev['eval_bytes']:,} |{downstream}{reg}\n\n"
        f"### Samples\n\n{samples_md}\n"
    )


@forja_flow("pipeline")
@takes_pipeline_parameters()
def pipeline(**params: Any) -> dict[str, Any]:
    """Raw text in, a trained, evaluated and registered model out."""
    return run_pipeline(PipelineParams(**params))


def params_of_run_dir(run_dir: str | os.PathLike) -> PipelineParams:
    path = Path(run_dir) / PARAMS_FILE
    if not path.is_file():
        from lm.errors import ConfigError

        raise ConfigError(
            f"{run_dir} holds no {PARAMS_FILE}: it was not made by `forja run`; nothing to resume"
        )
    return PipelineParams.model_validate(read_json(path))


__all__ = ["PipelineParams", "pipeline", "prepare_data", "run_pipeline"]
