"""The training loop: exact resume, checkpoints that are complete or refused, stops on NaN."""

import dataclasses
import json
import math
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file
from support import small_configs

from lm import checkpoint as ckpt
from lm.errors import CheckpointError, ConfigError, NonFiniteLossError
from lm.fileio import sha256_file
from lm.train import Trainer, lr_at, make_optimizer, train


def collect():
    seen = {}

    def on_metrics(metrics, step):
        seen[step] = dict(metrics)

    return seen, on_metrics


def weights(path):
    return load_file(str(path / ckpt.MODEL_FILE))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bitwise_exact(token_dir, tmp_path, optimizer):
    model, cfg = small_configs(max_steps=40, checkpoint_every=20, optimizer=optimizer)
    straight, cb = collect()
    r1 = train(model, cfg, token_dir, tmp_path / "straight", on_metrics=cb)

    half, cb_half = collect()
    stopped = train(
        model, cfg, token_dir, tmp_path / "split", on_metrics=cb_half, should_stop=lambda s: s == 20
    )
    assert stopped.stopped_early and stopped.checkpoint.name == "step-0000020"
    resumed, cb2 = collect()
    r2 = train(model, cfg, token_dir, tmp_path / "split", resume=True, on_metrics=cb2)

    assert sorted(resumed) == list(range(21, 41))
    assert [straight[s]["loss"] for s in range(21, 41)] == [resumed[s]["loss"] for s in range(21, 41)]
    assert [straight[s]["loss"] for s in range(1, 21)] == [half[s]["loss"] for s in range(1, 21)]
    w1, w2 = weights(r1.checkpoint), weights(r2.checkpoint)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert straight[40]["loss"] < straight[1]["loss"]  # it did learn something


def test_metrics_reach_the_callback_and_the_run_folder(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=20)
    seen, cb = collect()
    checkpoints = []
    result = train(
        model,
        cfg,
        token_dir,
        tmp_path / "run",
        on_metrics=cb,
        on_checkpoint=lambda path, step: checkpoints.append(step),
    )
    assert set(seen[10]) >= {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"}
    assert set(seen[20]) >= {"val_loss", "val_perplexity", "val_bpb"}
    assert 0 < seen[10]["mfu"] < 1 and seen[10]["tokens_per_s"] > 0
    assert seen[20]["val_perplexity"] == pytest.approx(math.exp(seen[20]["val_loss"]))
    assert checkpoints == [20] and result.checkpoint.name == "step-0000020"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 21))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["vocab_size"] == 512


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    _, cfg = small_configs(max_steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_no_weight_decay_on_norms_and_embeddings(token_dir):
    from lm.model import Transformer

    model_cfg, cfg = small_configs()
    m = Transformer(dataclasses.replace(model_cfg, vocab_size=512))
    opt = make_optimizer(m, cfg, torch.device("cpu"))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in m.named_parameters():
        assert (id(p) in decayed) == (p.dim() == 2 and "embed" not in name), name
    assert opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_transformer_and_lstm_train_through_the_same_loop(token_dir, tmp_path, arch):
    model, cfg = small_configs(max_steps=30, eval_every=30, lr=1e-2)
    model = dataclasses.replace(model, arch=arch)
    seen, cb = collect()
    result = train(model, cfg, token_dir, tmp_path / arch, on_metrics=cb)
    assert seen[30]["loss"] < seen[1]["loss"] - 1.0
    assert seen[30]["val_loss"] < math.log(512)
    loaded = ckpt.load_for_inference(tmp_path / arch)
    assert type(loaded.model).__name__ == ("LSTMModel" if arch == "lstm" else "Transformer")
    assert result.step == 30


def test_nan_stops_within_one_step_and_no_bad_checkpoint_is_written(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=30, checkpoint_every=5)
    trainer = Trainer(model, cfg, token_dir, tmp_path / "run")
    calls = {"n": 0}

    def poison(module, inputs, output):  # the 13th step's batch turns into NaN activations
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 13 else output

    trainer.model.embed_tokens.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="step 13"):
        trainer.fit()
    saved = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in saved][-1] == "step-0000010"
    for path in saved:
        assert all(torch.isfinite(t).all() for t in weights(path).values())


def test_keep_last_retention(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=25, checkpoint_every=5, keep_last=2)
    train(model, cfg, token_dir, tmp_path / "run")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-0000020", "step-0000025"]


def test_fresh_run_refuses_a_folder_with_checkpoints_and_resume_refuses_a_new_shape(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=5, checkpoint_every=5)
    train(model, cfg, token_dir, tmp_path / "run")
    with pytest.raises(CheckpointError, match="--resume"):
        train(model, cfg, token_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="n_layer: 2 -> 3"):
        train(dataclasses.replace(model, n_layer=3), cfg, token_dir, tmp_path / "run", resume=True)


@pytest.mark.parametrize("victim", [ckpt.MODEL_FILE, ckpt.OPTIM_FILE, ckpt.STATE_FILE, ckpt.MANIFEST_FILE])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_newest_checkpoint_is_refused_naming_the_file(token_dir, tmp_path, victim, damage):
    model, cfg = small_configs(max_steps=10, checkpoint_every=5)
    train(model, cfg, token_dir, tmp_path / "run")
    newest = ckpt.list_checkpoints(tmp_path / "run")[-1]
    f = newest / victim
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        ckpt.verify_checkpoint(newest)
    assert (victim if victim != ckpt.MANIFEST_FILE else "manifest") in str(e.value)
    refusals = []
    assert ckpt.latest_checkpoint(tmp_path / "run", on_refused=refusals.append).name == "step-0000005"
    assert victim in refusals[0] or "manifest" in refusals[0]
    resumed, cb = collect()
    train(
        model, dataclasses.replace(cfg, max_steps=12), token_dir, tmp_path / "run", resume=True, on_metrics=cb
    )
    assert min(resumed) == 6  # continued from step 5, the newest complete checkpoint


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickle_in_a_checkpoint_is_refused_and_never_runs(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=5, checkpoint_every=5)
    train(model, cfg, token_dir, tmp_path / "run")
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    Payload.marker = tmp_path / "pwned"
    (path / ckpt.OPTIM_FILE).write_bytes(pickle.dumps({"state": Payload()}))
    manifest = json.loads((path / ckpt.MANIFEST_FILE).read_text())  # the attacker fixes the digest too
    manifest["files"][ckpt.OPTIM_FILE] = {
        "sha256": sha256_file(path / ckpt.OPTIM_FILE),
        "bytes": (path / ckpt.OPTIM_FILE).stat().st_size,
    }
    (path / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"optimizer\.pt"):
        train(model, dataclasses.replace(cfg, max_steps=6), token_dir, tmp_path / "run", resume=True)
    assert not Payload.marker.exists()


def test_init_from_starts_a_new_run_from_trained_weights(token_dir, tmp_path):
    model, cfg = small_configs(max_steps=20, checkpoint_every=20)
    first = train(model, cfg, token_dir, tmp_path / "first")
    seen, cb = collect()
    second = Trainer(model, cfg, token_dir, tmp_path / "second", init_from=tmp_path / "first", on_metrics=cb)
    w0 = weights(first.checkpoint)
    assert all(torch.equal(p, w0[k]) for k, p in second.model.state_dict().items() if k in w0)
    second.fit()
    assert min(seen) == 1  # a fresh schedule: the new run counts its own steps
    fresh, cb_fresh = collect()
    train(model, cfg, token_dir, tmp_path / "fresh", on_metrics=cb_fresh)
    assert seen[1]["loss"] < fresh[1]["loss"] - 0.5  # it starts where the first run ended
    with pytest.raises(ConfigError, match="d_model"):
        Trainer(
            dataclasses.replace(model, d_model=32),
            cfg,
            token_dir,
            tmp_path / "x",
            init_from=tmp_path / "first",
        )


def test_a_shard_with_ids_outside_the_vocabulary_is_refused_naming_the_folder(token_dir, tmp_path):
    import shutil

    import numpy as np

    from lm.data import read_shard, write_shard
    from lm.errors import DataError

    forged = tmp_path / "tokens"
    shutil.copytree(token_dir, forged)
    ids = np.array(read_shard(forged / "train-00000.bin")) + 600  # a valid header, foreign ids
    write_shard(forged / "train-00000.bin", ids, n_docs=1, vocab_size=65_536)
    model, cfg = small_configs(max_steps=3)
    with pytest.raises(DataError, match=r"outside the model's vocabulary of 512"):
        train(model, cfg, forged, tmp_path / "run")
