"""Plots of a run, drawn by matplotlib into files (no display needed on a server).

`loss_curve_png` draws the loss curve that the pipeline logs to the run's MLflow artifacts.

A `Figure` made directly, not through pyplot: no global figure registry or backend to set, so
importing this module changes nothing for a notebook that imports the flows, and matplotlib is
imported with the flow's modules, while a `forja run`'s temporary Prefect server is still starting
(bench/orchestration.py), instead of inside the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.figure import Figure


def loss_curve_png(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Training loss and validation loss against step, from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", lw=1)
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)  # the format from the file's extension
    return Path(out_png)
