"""Plots of a run, drawn with matplotlib's file-only backend (no display needed on a server).

`loss_curve_png` draws the loss curve that the pipeline logs to the run's MLflow artifacts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def loss_curve_png(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Training loss and validation loss against step, from a run's metrics.jsonl."""
    import matplotlib  # deferred: importing forja should not cost matplotlib's start-up

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", lw=1)
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
