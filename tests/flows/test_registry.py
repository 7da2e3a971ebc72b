"""The champion gate, both ways, on a real SQLite MLflow store with a real (tiny) trained model.

Every registered version points at the same logged model (a real pyfunc with a real checkpoint);
what a decision reads is the version's metrics, which the tests give by hand. Where the gate has to
re-score a champion (a figure made on another evaluation set, or by another evaluation method),
it evaluates the real checkpoint, and the hand-written figures are chosen so that the decision can
only come out right if it did.
"""

from __future__ import annotations

import os

import mlflow
import pytest
from helpers import make_token_dir, shakespeare_text
from support import small_configs

from flows.params import PipelineParams, apply_sets
from flows.registry import current_champion, promote_if_better
from forja import tracking
from lm.checkpoint import export_for_inference
from lm.errors import ConfigError
from lm.evaluate import METHOD
from lm.train import train
from tasks.evaluate import (
    EvalConfig,
    downstream_method,
    evaluate_checkpoint,
    evaluate_downstream,
    freeze_eval_set,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)  # re-scoring a champion configures the process: undo it afterwards
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORJA_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        tokens = make_token_dir(shakespeare_text(60_000), home / "tokens", vocab_size=512)
        model, cfg = small_configs(max_steps=10)
        result = train(model, cfg, tokens, home / "run")
        eval_dir = home / "eval"
        freeze_eval_set(tokens, eval_dir, EvalConfig(max_bytes=5_000))
        real = evaluate_checkpoint(result.checkpoint, eval_dir)
        run_id = tracking.start_run("registry-test", {}, tracking.experiment_id())
        uri, _ = tracking.log_model(
            run_id, export_for_inference(result.checkpoint, home / "export" / "checkpoint"), register_as=None
        )
        tracking.end_run(run_id)
        yield {"uri": uri, "eval_dir": str(eval_dir), "real": real, "checkpoint": result.checkpoint}
        mlflow.set_tracking_uri("")
    os.environ.clear()
    os.environ.update(saved)


def register(world, dataset: str) -> str:
    return str(mlflow.register_model(world["uri"], tracking.model_name_for(dataset)).version)


def metrics(world, bpb: float, **overrides) -> dict:
    return {**world["real"], "eval_bpb": bpb, **overrides}


def champion_version(dataset: str) -> str | None:
    champ = current_champion(dataset)
    return champ and champ["version"]


def test_a_better_model_takes_the_champion_and_a_worse_one_stays_a_challenger(world):
    v1 = register(world, "gate")
    assert promote_if_better(v1, metrics(world, 2.0), world["eval_dir"], "gate")["promoted"]
    v2 = register(world, "gate")
    worse = promote_if_better(v2, metrics(world, 2.5), world["eval_dir"], "gate")
    assert not worse["promoted"] and worse["champion"] == v1 and champion_version("gate") == v1
    v3 = register(world, "gate")
    better = promote_if_better(v3, metrics(world, 1.5), world["eval_dir"], "gate")
    assert better["promoted"] and better["previous_champion"] == v1 and champion_version("gate") == v3
    equal = register(world, "gate")  # a tie is not better
    assert not promote_if_better(equal, metrics(world, 1.5), world["eval_dir"], "gate")["promoted"]


def test_each_dataset_has_its_own_model_and_champion(world):
    a1 = register(world, "alpha")
    promote_if_better(a1, metrics(world, 2.0), world["eval_dir"], "alpha")
    b1 = register(world, "beta")  # far better, on its own dataset
    assert promote_if_better(b1, metrics(world, 0.5), world["eval_dir"], "beta")["promoted"]
    a2 = register(world, "alpha")  # a worse alpha model
    assert not promote_if_better(a2, metrics(world, 3.0), world["eval_dir"], "alpha")["promoted"]
    assert champion_version("alpha") == a1 and champion_version("beta") == b1
    rows = {r["name"]: r for r in tracking.list_models()}
    assert rows["forja-alpha"] == {
        "name": "forja-alpha",
        "dataset": "alpha",
        "champion_version": int(a1),
        "eval_bpb": 2.0,
        "uri": "models:/forja-alpha@champion",
        "versions": 2,
    }
    assert rows["forja-beta"]["dataset"] == "beta" and rows["forja-beta"]["champion_version"] == int(b1)
    assert tracking.model_name_for("default") == "forja"


def test_a_champion_scored_on_another_evaluation_set_is_re_scored_on_this_one(world):
    real = world["real"]["eval_bpb"]
    champ = register(world, "rescore")
    # its recorded figure (0.01) was made on another set: taken at face value, nothing would beat it
    promote_if_better(
        champ, metrics(world, 0.01, eval_set_digest="another-set"), world["eval_dir"], "rescore"
    )
    worse = register(world, "rescore")
    assert not promote_if_better(worse, metrics(world, real + 0.5), world["eval_dir"], "rescore")["promoted"]
    better = register(world, "rescore")
    decision = promote_if_better(better, metrics(world, real - 0.01), world["eval_dir"], "rescore")
    assert decision["promoted"] and decision["champion_bpb"] == pytest.approx(real)


def test_a_figure_made_by_another_evaluation_method_is_re_scored(world):
    real = world["real"]["eval_bpb"]
    champ = register(world, "method")
    promote_if_better(champ, metrics(world, 0.01, eval_method="older-windows"), world["eval_dir"], "method")
    assert (
        mlflow.MlflowClient().get_model_version("forja-method", champ).tags["eval_method"] == "older-windows"
    )
    better = register(world, "method")
    decision = promote_if_better(better, metrics(world, real - 0.01), world["eval_dir"], "method")
    assert decision["promoted"] and decision["champion_bpb"] == pytest.approx(real)
    assert METHOD != "older-windows"


def test_a_champion_of_another_dataset_in_an_old_single_model_home_is_replaced(world):
    """Before per-dataset models every dataset shared `forja`: its champion may be another
    dataset's model, which is no measure for this one."""
    old = register(world, "default")
    c = mlflow.MlflowClient()
    c.set_model_version_tag("forja", old, "dataset", "shakespeare")
    c.set_model_version_tag("forja", old, "eval_bpb", "0.01")
    c.set_registered_model_alias("forja", "champion", old)
    new = register(world, "default")
    decision = promote_if_better(new, metrics(world, 9.0), world["eval_dir"], "default")
    assert decision["promoted"] and "shakespeare" in decision["reason"]
    assert champion_version("default") == new


def test_the_gate_can_compare_a_downstream_accuracy_where_higher_is_better(world):
    """`register.metric` names the figure: here an accuracy, so a higher one wins, whatever the bits
    per byte say; a champion whose accuracy was made by another task builder is re-scored."""
    acc = "downstream/cloze/acc_norm"
    config = EvalConfig(downstream_items=20, downstream_seed=1)
    method = {"downstream_method": downstream_method(config)}

    def decide(version, bpb, value, **extra):
        m = metrics(world, bpb, **{acc: value, **method, **extra})
        return promote_if_better(version, m, world["eval_dir"], "accuracy", metric=acc)

    v1 = register(world, "accuracy")
    assert decide(v1, 2.0, 0.30)["promoted"]
    v2 = register(world, "accuracy")
    lower = decide(v2, 1.0, 0.25)  # far better bits per byte, lower accuracy: not better by this gate
    assert not lower["promoted"] and lower["reason"] == f"{acc} 0.2500 <= champion v{v1} 0.3000"
    v3 = register(world, "accuracy")
    assert decide(v3, 3.0, 0.35)["promoted"] and champion_version("accuracy") == v3
    tags = mlflow.MlflowClient().get_model_version("forja-accuracy", v3).tags
    assert (
        float(tags[acc]) == 0.35
        and tags["gate_metric"] == acc
        and tags["downstream_method"] == method["downstream_method"]
    )

    real = evaluate_downstream(world["checkpoint"], world["eval_dir"], config)[acc]
    v4 = register(world, "accuracy")  # a champion whose figure (0.99) another builder made
    assert decide(v4, 2.0, 0.99, downstream_method="mc0-seed1-items20")["promoted"]
    v5 = register(world, "accuracy")
    decision = decide(v5, 2.0, real + 0.01)
    assert decision["promoted"] and decision["champion_value"] == pytest.approx(real)

    with pytest.raises(ConfigError, match=r"register\.metric=downstream/word_order/acc was not measured"):
        promote_if_better(v5, metrics(world, 2.0), world["eval_dir"], "accuracy", "downstream/word_order/acc")
    with pytest.raises(ConfigError, match=r"'register\.metric'.*not a figure of the evaluate stage"):
        apply_sets(PipelineParams(), ["register.metric=accuracy"])
