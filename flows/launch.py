"""Launching training as several processes through torchrun: one node, or several nodes.

One node (`run.nproc` > 1, `run.nnodes` = 1) runs torchrun `--standalone`. Several nodes
(`run.nnodes` > 1) each run the same train task with their own `run.node_rank` and the same
`run.rdzv_endpoint` (host:port of node 0): torchrun meets at a c10d rendezvous hosted by node 0
(`is_host`), named after the training's key, so that two trainings never join each other's.
The backend is gloo on CPUs and NCCL on GPUs (lm.runtime chooses). Global ranks are given by the
rendezvous, not by the node rank: the node that holds global rank 0 writes the checkpoints and the
metrics, so the run folder (`run.out`) belongs on storage every node sees.
"""

from __future__ import annotations

import os
import subprocess
import sys

from flows.params import RunParams
from lm.config import ModelConfig, TrainConfig, to_dict


def torchrun_args(run: RunParams, rdzv_id: str) -> list[str]:
    """torchrun's options for this run's processes and nodes."""
    if run.nnodes == 1:
        return ["--standalone", f"--nproc_per_node={run.nproc}"]
    return [
        f"--nnodes={run.nnodes}",
        f"--nproc_per_node={run.nproc}",
        f"--node_rank={run.node_rank}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={run.rdzv_endpoint}",
        f"--rdzv_id={rdzv_id}",
        f"--rdzv_conf=is_host={'true' if run.node_rank == 0 else 'false'}",
    ]


def torchrun(
    run: RunParams,
    rdzv_id: str,
    tokens_dir: str,
    run_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    mlflow_run_id: str | None,
) -> None:
    """Train as `run.nproc` processes on each of `run.nnodes` nodes; rank 0 logs to the MLflow run."""
    sets = [f"{part}.{k}={v}" for part, d in to_dict(model_cfg, train_cfg).items() for k, v in d.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(run, rdzv_id)]
    cmd += ["-m", "forja.cli", "train", "--data", tokens_dir, "--out", run_dir, "--resume"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, **({"FORJA_MLFLOW_RUN_ID": mlflow_run_id} if mlflow_run_id else {})}
    subprocess.run(cmd, check=True, env=env)
