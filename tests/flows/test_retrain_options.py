"""`forja retrain --continue-from-champion / --new-tokenizer`: what each flag changes, both ways.

A real (tiny) model trained on text A is registered and made the champion of a dataset on a real
SQLite MLflow store. New data (text B, a different part of tinyshakespeare) then goes through the
tokenize stage with the parameters the retrain flow derives (`retrain_params`), and a Trainer is
built from them. What is expected comes from the files themselves: the champion's tokenizer is the
`tokenizer.model` its training read (hashed here with hashlib), its weights are the safetensors of
its own checkpoint, and a new tokenizer is the one the tokenize stage trains on text B with no
tokenizer given.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import make_token_dir, shakespeare_text
from safetensors.torch import load_file
from support import small_configs

from flows.params import PipelineParams, RunParams
from flows.retrain import retrain_params
from forja import tracking
from forja.models import local_checkpoint
from lm import checkpoint as ckpt
from lm.checkpoint import export_for_inference
from lm.errors import CheckpointError
from lm.train import Trainer, train
from tasks.tokenize import TokenizeConfig, run_tokenize

DATASET = "retrain-options"

pytestmark = pytest.mark.slow


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)  # fetching a models:/ URI configures the process: undo it afterwards
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORJA_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        text = shakespeare_text(120_000)
        champion_tokens = make_token_dir(text[:60_000], home / "tokens-a", vocab_size=512)
        model, cfg = small_configs(max_steps=10)
        result = train(model, cfg, champion_tokens, home / "run")
        run_id = tracking.start_run("retrain-options", {}, tracking.experiment_id())
        name = tracking.model_name_for(DATASET)
        _, version = tracking.log_model(
            run_id, export_for_inference(result.checkpoint, home / "export" / "checkpoint"), register_as=name
        )
        tracking.end_run(run_id)
        tracking.client().set_registered_model_alias(name, tracking.CHAMPION, version)
        # the new data: text B, run up to clean; tokenize is what the options decide
        new_tokens = make_token_dir(text[60_000:], home / "tokens-b", vocab_size=512)
        yield {
            "home": home,
            "uri": f"models:/{name}/{version}",
            "champion_tokenizer": sha256(champion_tokens / "tokenizer.model"),
            "champion_weights": load_file(str(result.checkpoint / ckpt.MODEL_FILE)),
            "new_clean": home / "tokens-b-stages" / "clean",
            "new_tokenizer": sha256(new_tokens / "tokenizer.model"),  # trained on B, nothing reused
            "model": model,
            "cfg": cfg,
        }
        mlflow.set_tracking_uri("")
    os.environ.clear()
    os.environ.update(saved)


def derived(dataset: str, continue_from_champion: bool, new_tokenizer: bool) -> PipelineParams:
    given = PipelineParams(run=RunParams(dataset=dataset), tokenize=TokenizeConfig(vocab_size=512))
    return retrain_params(given, continue_from_champion, new_tokenizer)


def tokenize_new_data(world, params: PipelineParams, name: str) -> Path:
    out = world["home"] / name
    # as the flow passes it to the stage (flows/pipeline.py): through JSON, validated again
    run_tokenize(
        world["new_clean"], out, TokenizeConfig.model_validate(params.tokenize.model_dump(mode="json"))
    )
    return out


def initial_weights(world, params: PipelineParams, tokens: Path, name: str) -> dict[str, torch.Tensor]:
    init = str(local_checkpoint(params.run.init_from)) if params.run.init_from else None
    t = Trainer(world["model"], world["cfg"], tokens, world["home"] / name, init_from=init)
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)


def test_by_default_retrain_reuses_the_champions_tokenizer_and_trains_from_scratch(world):
    params = derived(DATASET, continue_from_champion=False, new_tokenizer=False)
    assert params.tokenize.tokenizer is not None
    assert sha256(params.tokenize.tokenizer) == world["champion_tokenizer"]
    assert params.run.init_from is None
    tokens = tokenize_new_data(world, params, "default-tokens")
    assert sha256(tokens / "tokenizer.model") == world["champion_tokenizer"] != world["new_tokenizer"]
    assert not same_weights(initial_weights(world, params, tokens, "default-run"), world["champion_weights"])


def test_continue_from_champion_starts_from_its_weights_with_its_tokenizer(world):
    for new_tokenizer in (False, True):  # continuing needs the champion's token ids: it wins
        params = derived(DATASET, continue_from_champion=True, new_tokenizer=new_tokenizer)
        assert sha256(params.tokenize.tokenizer) == world["champion_tokenizer"], new_tokenizer
        assert params.run.init_from == world["uri"], new_tokenizer
    tokens = tokenize_new_data(world, params, "continue-tokens")
    assert sha256(tokens / "tokenizer.model") == world["champion_tokenizer"]
    assert same_weights(initial_weights(world, params, tokens, "continue-run"), world["champion_weights"])


def test_new_tokenizer_trains_one_on_the_new_data_and_starts_from_scratch(world):
    params = derived(DATASET, continue_from_champion=False, new_tokenizer=True)
    assert params.tokenize.tokenizer is None and params.run.init_from is None
    tokens = tokenize_new_data(world, params, "new-tokens")
    assert sha256(tokens / "tokenizer.model") == world["new_tokenizer"] != world["champion_tokenizer"]
    assert not same_weights(initial_weights(world, params, tokens, "new-run"), world["champion_weights"])
    # and the champion cannot be continued on these token ids
    with pytest.raises(CheckpointError, match="tokenizer"):
        initial_weights(
            world, params.model_copy(update={"run": RunParams(init_from=world["uri"])}), tokens, "x"
        )


@pytest.mark.parametrize("continue_from_champion", [False, True])
@pytest.mark.parametrize("new_tokenizer", [False, True])
def test_without_a_champion_retrain_is_a_plain_pipeline_run(world, continue_from_champion, new_tokenizer):
    given = PipelineParams(run=RunParams(dataset="no-champion-yet"), tokenize=TokenizeConfig(vocab_size=512))
    assert retrain_params(given, continue_from_champion, new_tokenizer) == given
