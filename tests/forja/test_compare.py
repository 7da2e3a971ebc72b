"""`forja compare RUN ...`: two real MLflow runs (a temporary SQLite store), recorded the way a
pipeline run records them, side by side in the terminal."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from support import ROOT, child_env
from typer.testing import CliRunner

from flows.params import PipelineParams, apply_sets, flatten
from forja import tracking
from forja.cli import app


@pytest.fixture()
def two_runs(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("FORJA_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    ids = []
    for sets, bpb, acc in (
        (["max_steps=20"], 2.5, 0.31),
        (["max_steps=60", "warmup_steps=7", "register.metric=downstream/cloze/acc_norm"], 2.1, 0.42),
    ):
        params = apply_sets(PipelineParams(sources=["corpus.txt"]), sets)
        run_id = tracking.start_run("pipeline", {}, tracking.experiment_id())
        tracking.log_params(run_id, flatten(params, *params.lm_configs()))
        tracking.log_metrics(run_id, {"eval_bpb": bpb, "downstream/cloze/acc_norm": acc, "loss": 3.0})
        tracking.end_run(run_id)
        ids.append(run_id)
    yield tmp_path, ids
    mlflow.set_tracking_uri("")


@pytest.mark.slow
def test_compare_puts_the_key_parameters_and_figures_of_runs_side_by_side(two_runs):
    home, (a, b) = two_runs
    result = CliRunner().invoke(app, ["compare", a, b])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [a, b]
    rows = {line[2:].split()[0]: (line[0], line[2:].split()[1:]) for line in lines[1:]}
    assert rows["preset"] == (" ", ["tiny", "tiny"])  # the same: no mark
    assert rows["train.max_steps"] == ("*", ["20", "60"])  # differs: marked
    assert rows["register.metric"] == ("*", ["eval_bpb", "downstream/cloze/acc_norm"])
    assert rows["eval_bpb"] == ("*", ["2.5", "2.1"])
    assert rows["downstream/cloze/acc_norm"] == ("*", ["0.31", "0.42"])
    assert "train.warmup_steps" not in rows and "loss" not in rows  # not a key row
    assert "eval_loss" not in rows  # no run recorded it

    every = CliRunner().invoke(app, ["compare", a, b, "--all"])
    rows = {line[2:].split()[0]: line[2:].split()[1:] for line in every.output.splitlines()[1:]}
    assert rows["train.warmup_steps"][1] == "7" != rows["train.warmup_steps"][0]
    assert "train.seed" not in rows  # --all adds the parameters that differ, not all of them

    r = subprocess.run(
        [sys.executable, "-m", "forja.cli", "compare", a, "0123456789abcdef0123456789abcdef"],
        env=child_env(FORJA_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: no MLflow run '0123456789abcdef")
