"""Training as real processes: killed with SIGKILL and resumed; data-parallel under torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lm import checkpoint as ckpt

SMALL = [
    "--set",
    "n_layer=2",
    "--set",
    "d_model=64",
    "--set",
    "n_head=2",
    "--set",
    "max_seq_len=32",
    "--set",
    "device=cpu",
    "--set",
    "dtype=float32",
    "--set",
    "log_every=1",
    "--set",
    "eval_every=0",
]


def forja(*args):
    return [sys.executable, "-m", "forja.cli", *args]


def losses(run_dir):
    return {
        r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    }


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_completes(token_dir, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(token_dir),
        "--out",
        str(run),
        *SMALL,
        "--set",
        "max_steps=400",
        "--set",
        "optimizer=adamw",  # the subject is the processes: 400 AdamW steps of a 64-wide model are cheaper
        "--set",
        "checkpoint_every=10",
        "--set",
        "keep_last=2",
    ]
    proc = subprocess.Popen(forja(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(ckpt.list_checkpoints(run)) < 2:  # killed mid-run, after a few checkpoints
            assert proc.poll() is None and time.time() < deadline, "training ended or stalled before the kill"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    survivor = ckpt.latest_checkpoint(run)
    resumed_from = int(survivor.name.split("-")[1])
    assert 10 <= resumed_from < 400
    done = subprocess.run(forja(*args, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 400
    assert f"resumed from {survivor}" in done.stderr
    assert ckpt.latest_checkpoint(run).name == "step-0000400"


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process_on_the_same_global_batch(token_dir, tmp_path):
    common = ["--data", str(token_dir), *SMALL, "--set", "max_steps=6", "--set", "checkpoint_every=0"]
    single = subprocess.run(
        forja("train", "--out", str(tmp_path / "one"), *common, "--set", "batch_size=8"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "forja.cli",
            "train",
            "--out",
            str(tmp_path / "two"),
            *common,
            "--set",
            "batch_size=4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stderr
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), f"step {step}"
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
