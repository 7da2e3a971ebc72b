"""`forja run --set run.nproc=2` through the flow: torchrun launches two training processes (gloo on
CPUs) and only global rank 0 writes to the flow's MLflow run, so MLflow holds one run, one value per
metric and step, the run's parameters and one registered model version."""

import collections
import json

import mlflow
import pytest
from helpers import shakespeare_text
from support import FAST, write_corpus

pytestmark = pytest.mark.slow

STEPS = 4


def test_two_processes_log_to_one_mlflow_run_once_per_step(servers, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", shakespeare_text(30_000), n_files=2)
    sets = [
        *FAST,
        f"max_steps={STEPS}",
        "eval_every=2",
        "checkpoint_every=2",
        "evaluate.max_bytes=4000",
        "log_every=1",
        "evaluate.downstream_items=0",
        "run.export_hf=false",
        "run.dataset=nproc",
        "run.nproc=2",
    ]
    r = servers.forja("run", "--source", str(corpus), *[a for kv in sets for a in ("--set", kv)])
    # the run's result is the last JSON object printed (the ranks' `forja train` print theirs before)
    result, _ = json.JSONDecoder().raw_decode(r.stdout[r.stdout.rindex("\n{") + 1 :])
    assert result["step"] == STEPS

    mlflow.set_tracking_uri(servers.home.default_tracking_uri)
    c = mlflow.MlflowClient()
    run = c.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])  # this module's store
    assert [x.info.run_id for x in runs] == [run.info.run_id]  # the ranks opened no run of their own
    assert run.data.params["run.nproc"] == "2" and run.data.params["train.max_steps"] == str(STEPS)
    for name in ("loss", "lr", "val_loss", "val_bpb"):
        steps = [m.step for m in c.get_metric_history(run.info.run_id, name)]
        assert steps and not [s for s, n in collections.Counter(steps).items() if n > 1], (name, steps)
    loss_steps = [m.step for m in c.get_metric_history(run.info.run_id, "loss")]
    assert sorted(loss_steps) == list(range(1, STEPS + 1))  # every step once, by rank 0 alone
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_loss")] == [2, 4]
    versions = c.search_model_versions()  # every version in this module's registry
    assert [(v.run_id, str(v.version)) for v in versions] == [(run.info.run_id, str(result["model_version"]))]
