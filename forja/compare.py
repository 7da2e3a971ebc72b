"""`forja compare RUN ...`: the key parameters and figures of several MLflow runs side by side.

A terminal's version of MLflow's compare view: one column per run (by MLflow run id), one row per
parameter or metric that any of them has, in a fixed order (the key parameters, then the evaluation
figures, then training's), and a `*` before each row whose values differ. `--all` adds every other
parameter that differs between the runs.
"""

from __future__ import annotations

from typing import Any

from forja import tracking
from lm.downstream import TASKS
from lm.errors import ForjaError

KEY_PARAMS = (
    "preset",
    "sources",
    "run.dataset",
    "model.arch",
    "model.n_layer",
    "model.n_head",
    "model.d_model",
    "model.max_seq_len",
    "tokenize.vocab_size",
    "train.max_steps",
    "train.batch_size",
    "train.lr",
    "register.metric",
)
KEY_METRICS = (
    "eval_bpb",
    "eval_loss",
    "eval_perplexity",
    *(f"downstream/{task}/{figure}" for task in TASKS for figure in ("acc", "acc_norm")),
    "final_val_loss",
    "final_val_bpb",
    "tokens_per_s",
    "mfu",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def compare_runs(run_ids: list[str], all_params: bool = False) -> list[tuple[str, list[str]]]:
    """(row name, one value per run) for the runs' key parameters and figures ("-": not recorded)."""
    c = tracking.client()
    runs = []
    for rid in run_ids:
        try:
            runs.append(c.get_run(rid))
        except Exception as e:  # MlflowException: RESOURCE_DOES_NOT_EXIST, or a malformed id
            raise ForjaError(
                f"no MLflow run {rid!r} in {tracking.mlflow.get_tracking_uri()} ({type(e).__name__}); "
                "give run ids as `forja run` prints them (mlflow_run_id) or the MLflow UI shows them"
            ) from None
    rows: list[tuple[str, list[str]]] = [
        ("run name", [r.info.run_name or "-" for r in runs]),
        ("status", [r.info.status for r in runs]),
    ]
    params = [name for name in KEY_PARAMS if any(name in r.data.params for r in runs)]
    if all_params:
        every = sorted({k for r in runs for k in r.data.params} - set(KEY_PARAMS))
        params += [k for k in every if len({r.data.params.get(k) for r in runs}) > 1]
    rows += [(name, [r.data.params.get(name, "-") for r in runs]) for name in params]
    metrics = [name for name in KEY_METRICS if any(name in r.data.metrics for r in runs)]
    rows += [
        (name, [_fmt(r.data.metrics[name]) if name in r.data.metrics else "-" for r in runs])
        for name in metrics
    ]
    return rows


def format_table(run_ids: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """Plain text: a header of run ids, then `* name  value  value ...` (`*`: the values differ)."""
    width = max(len(name) for name, _ in rows) + 2
    cols = [min(40, max(len(rid), *(len(values[i]) for _, values in rows))) for i, rid in enumerate(run_ids)]
    header = " " * (width + 2) + "  ".join(rid[:c].ljust(c) for rid, c in zip(run_ids, cols, strict=True))
    lines = [header.rstrip()]
    for name, values in rows:
        mark = "*" if len(set(values)) > 1 else " "
        cells = "  ".join(v[:c].ljust(c) for v, c in zip(values, cols, strict=True))
        lines.append(f"{mark} {name.ljust(width)}{cells}".rstrip())
    return "\n".join(lines)


def compare_text(run_ids: list[str], all_params: bool = False) -> str:
    """What `forja compare` prints, from the tracking store of the Forja home (or MLFLOW_TRACKING_URI)."""
    from forja.home import configure

    configure()
    return format_table(run_ids, compare_runs(run_ids, all_params))
