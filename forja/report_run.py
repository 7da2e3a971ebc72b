"""The report card of an MLflow run: gathered from the run, sent where it goes, printed by
`forja report RUN_ID_OR_MODEL_URI` (forja/report_cli.py).

`gather` reads what the pipeline logged (parameters, metrics, tags, config.json, the data stages'
manifests under data/, metrics.jsonl, samples.txt, loss_curve.png, environment.json) into the plain
dict that `forja.report.card_markdown` renders; `publish` logs report.md and report.html to the
run and puts the markdown on the run's registered model version as its description. The machine a
run trained on is recorded at the end of the run (`environment()`, logged as environment.json), so
a card printed later elsewhere still names it.

Per source: a run that logged `data/<source>/{ingest,clean,tokens}/manifest.json` (a mixture of
sources) gets one funnel per source after the dataset's.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from forja import tracking
from forja.report import PACKAGES, ReportConfig, card_html, card_markdown, funnel, tokenizer_figures
from forja.report import training_figures as _training
from lm.errors import ConfigError, ForjaError

STAGES = ("ingest", "clean", "tokens")
DESCRIPTION_LIMIT = 5000  # characters of a model version's description in MLflow's SQL stores


def environment() -> dict[str, Any]:
    """Package versions and hardware of this machine (where the run trained)."""
    import torch

    from lm.runtime import cpu_has_native_bf16, pick_dtype

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "packages": packages,
        "hardware": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "gpu": f"{gpu} x{torch.cuda.device_count()}" if gpu else None,
            "native_bf16": torch.cuda.is_bf16_supported() if gpu else cpu_has_native_bf16(),
            "device": "cuda" if gpu else "cpu",
            "auto_dtype": str(pick_dtype("auto", torch.device("cuda" if gpu else "cpu"))).removeprefix(
                "torch."
            ),
        },
    }


def resolve(ref: str) -> tuple[str, Any]:
    """(run id, model version or None) of a run id, `models:/name@alias` or `models:/name/version`."""
    c = tracking.client()
    where = tracking.mlflow.get_tracking_uri()
    if ref.startswith("models:/"):
        name, sep, rest = ref.removeprefix("models:/").partition("@")
        try:
            if sep:
                mv = c.get_model_version_by_alias(name, rest)
            else:
                name, _, version = name.rpartition("/")
                if not name or not version.isdigit():
                    raise ForjaError(
                        f"{ref} is not a model URI; give models:/NAME@ALIAS or models:/NAME/VERSION"
                    )
                mv = c.get_model_version(name, version)
        except ForjaError:
            raise
        except Exception as e:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise ForjaError(
                f"no registered model {ref} in {where} ({type(e).__name__}); `forja models` lists them"
            ) from None
        return mv.run_id, mv
    try:
        c.get_run(ref)
    except Exception as e:
        raise ForjaError(
            f"no MLflow run {ref!r} in {where} ({type(e).__name__}); give a run id as `forja run` prints "
            "it (mlflow_run_id), or a model URI such as models:/forja@champion"
        ) from None
    return ref, None


def _read(c, run_id: str, path: str, tmp: Path) -> Path | None:
    try:
        return Path(c.download_artifacts(run_id, path, str(tmp)))
    except Exception:  # not logged by this run (an older run, a cached stage)
        return None


def _json(c, run_id: str, path: str, tmp: Path) -> dict[str, Any] | None:
    p = _read(c, run_id, path, tmp)
    return json.loads(p.read_text()) if p is not None and p.is_file() else None


def _model_figures(resolved: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Parameters and matmul parameters of the run's model, and the tokens of one optimiser step
    per process. (The model is built on the CPU and dropped: the meta device would need no memory,
    but its first use imports seconds of torch's reference kernels.)"""
    from lm.config import from_dict
    from lm.models import build_model

    model_cfg, train_cfg = from_dict(resolved)
    model = build_model(model_cfg)
    seq_len = train_cfg.seq_len or model_cfg.max_seq_len
    attention = model_cfg.arch != "lstm"
    attn = 12.0 * model_cfg.n_layer * model_cfg.d_model * seq_len if attention else 0.0
    figures = {
        "arch": model_cfg.arch,
        "params": model.num_params(),
        "matmul_params": round((model.flops_per_token(seq_len) - attn) / 6.0),
        "n_layer": model_cfg.n_layer,
        "d_model": model_cfg.d_model,
        "seq_len": seq_len,
        "attention": attention,
        "flops_per_token": model.flops_per_token(seq_len),  # lm's own figure, for checking the card's
    }
    return figures, train_cfg.batch_size * train_cfg.grad_accum * seq_len


def gather(run_id: str, config: ReportConfig | None = None) -> tuple[dict[str, Any], bytes | None]:
    """The card's dict of an MLflow run, and its loss curve PNG (None when not logged).

    `config`: the pricing and peak to state; default: what the run recorded (`report.*`)."""
    c = tracking.client()
    run = c.get_run(run_id)
    tags, metrics = run.data.tags, dict(run.data.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cfg = _json(c, run_id, "config.json", t) or {}
        params = cfg.get("params") or {}
        if config is None:
            config = ReportConfig.model_validate(params.get("report") or {})
        manifests = {s: _json(c, run_id, f"data/{s}/manifest.json", t) for s in STAGES}
        sources = {}
        for a in c.list_artifacts(run_id, "data"):
            name = a.path.removeprefix("data/")
            if a.is_dir and name not in STAGES:
                per = {s: _json(c, run_id, f"data/{name}/{s}/manifest.json", t) for s in STAGES}
                if all(per.values()):
                    sources[name] = funnel(per["ingest"], per["clean"], per["tokens"])
        rows_file = _read(c, run_id, "metrics.jsonl", t)
        rows = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()] if rows_file else []
        samples_file = _read(c, run_id, "samples.txt", t)
        texts = samples_file.read_text().split("\n\n---\n\n") if samples_file else []
        png_file = _read(c, run_id, "loss_curve.png", t)
        png = png_file.read_bytes() if png_file is not None else None
        env = _json(c, run_id, "environment.json", t)
    model, tokens_per_step = _model_figures(cfg["resolved"]) if cfg.get("resolved") else ({}, 0)
    nproc = int((params.get("run") or {}).get("nproc", 1))
    training = None
    if rows and model:
        training = _training(rows, tokens_per_step * nproc, model["flops_per_token"], config)
    prompts = (params.get("evaluate") or {}).get("prompts") or []
    samples = [
        {"prompt": prompts[i] if len(prompts) == len(texts) else None, "text": text}
        for i, text in enumerate(texts)
    ]
    data = {}
    if all(manifests.values()):
        data = {"funnel": funnel(manifests["ingest"], manifests["clean"], manifests["tokens"])}
    dataset = (params.get("run") or {}).get("dataset") or tags.get("dataset")
    card = {
        "run": {
            "run_id": run_id,
            "name": run.info.run_name,
            "dataset": dataset,
            "preset": params.get("preset") or tags.get("preset"),
            "git_commit": tags.get("git_commit"),
            "dtype": (cfg.get("resolved") or {}).get("train", {}).get("dtype"),
            "model": _registered_as(dataset, tags.get("model_version")),
        },
        "environment": env,
        "data": {**data, "sources": sources},
        "tokenizer": tokenizer_figures(manifests["tokens"]) if manifests["tokens"] else {},
        "model": model,
        "training": training,
        "metrics": metrics,
        "samples": samples,
        "has_loss_curve": png is not None,
    }
    return card, png


def _registered_as(dataset: str | None, version: str | None) -> str | None:
    if not dataset or version in (None, "", "None"):
        return None
    return f"models:/{tracking.model_name_for(dataset)}/{version}"


def render(run_id: str, config: ReportConfig | None = None) -> tuple[str, str]:
    """(markdown, HTML) of the run's card."""
    card, png = gather(run_id, config)
    md = card_markdown(card)
    return md, card_html(md, png)


def portable(markdown: str) -> str:
    """The card for a page away from the run's artifacts (Prefect, the registry): the loss curve
    named instead of linked."""
    return markdown.replace("![loss curve](loss_curve.png)", "`loss_curve.png` in the MLflow run's artifacts")


def description(markdown: str) -> str:
    """The card as a model version's description, cut to what MLflow's SQL stores hold."""
    md = portable(markdown)
    if len(md) <= DESCRIPTION_LIMIT:
        return md
    note = "\n\n… (cut; the whole card is report.md in the run's artifacts)\n"
    return md[: DESCRIPTION_LIMIT - len(note)] + note


def publish(run_id: str, config: ReportConfig, registered: dict[str, Any] | None) -> str:
    """Log report.md and report.html to the run, set the card as the description of the model
    version this run registered; return the markdown."""
    tracking.log_json(run_id, environment(), "environment.json")
    md, page = render(run_id, config)
    c = tracking.client()
    c.log_text(run_id, md, "report.md")
    c.log_text(run_id, page, "report.html")
    name, version = (registered or {}).get("model_name"), (registered or {}).get("version")
    if name and version:
        mv = c.get_model_version(name, str(version))
        if mv.run_id == run_id:  # a cached registration's version belongs to the run that made it
            c.update_model_version(name, str(version), description=description(md))
    return md


def recorded_config(run_id: str) -> ReportConfig:
    """The `report.*` settings a run recorded (the defaults for a run from before them)."""
    c = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        params = (_json(c, run_id, "config.json", Path(tmp)) or {}).get("params") or {}
    try:
        return ReportConfig.model_validate(params.get("report") or {})
    except ValueError as e:
        raise ConfigError(f"run {run_id} recorded report settings this Forja cannot read: {e}") from None
