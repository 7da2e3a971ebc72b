"""FSDP2 (parallel=fsdp) and activation checkpointing: real torchrun processes on gloo, tiny shapes.

One FSDP run is killed by the checkpoint fault seam in the middle of a save and resumed; its losses
are compared with one process on the same global batch (fp32 tolerance), with its own uninterrupted
steps (bitwise), and its consolidated weights are loaded and exported like a single process's.
(Two launches: a single launch with `--max-restarts=1` resumed too, but its restarted ranks failed
now and then to connect their gloo mesh on a loaded machine.)
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from lm import checkpoint as ckpt
from lm import parallel
from lm.config import ModelConfig, TrainConfig
from lm.errors import CheckpointError, ConfigError
from lm.models import build_model
from lm.train import Trainer, train

SHAPE = ["n_layer=2", "d_model=64", "n_head=2", "max_seq_len=32", "tie_embeddings=true"]
SETTINGS = [
    *SHAPE,
    "device=cpu",
    "dtype=float32",
    "log_every=1",
    "eval_every=0",
    "eval_batches=1",
    "max_steps=8",
    "optimizer=adamw",  # the tiny preset trains with Muon, which needs whole matrices: not with fsdp
]


def torchrun(*args, env=None):
    sets = [
        x
        for s in [*SETTINGS, "checkpoint_every=3", "batch_size=2", "grad_accum=2", "parallel=fsdp"]
        for x in ("--set", s)
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "forja.cli", "train", *args, *sets],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def logged(run_dir):
    """Every line of metrics.jsonl, in order (a resumed run logs its steps again)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_matches_one_process_resumes_exactly_and_exports_one_file(token_dir, tmp_path):
    run = tmp_path / "fsdp"
    args = ["--data", str(token_dir), "--out", str(run)]
    # killed in the middle of its second save (step 6): step 3 is the newest complete checkpoint
    killed = torchrun(*args, env={ckpt.FAULT_ENV: "manifest.json:2"})
    assert killed.returncode != 0
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000003"]
    first = {r["step"]: r for r in logged(run)}
    assert sorted(first) == list(range(1, 7))
    shards = {p.name for p in (run / "checkpoints" / "step-0000003").iterdir()}
    assert {ckpt.shard_file(k, r, 2) for k in ("model", "optimizer") for r in (0, 1)} <= shards
    assert ckpt.OPTIM_FILE not in shards

    resumed = torchrun(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "sharded over 2 ranks" in resumed.stderr
    again = {r["step"]: r for r in logged(run)[6:]}
    assert sorted(again) == list(range(4, 9))
    for step in (4, 5, 6):  # the resumed run retraces the killed one bit for bit
        assert (again[step]["loss"], again[step]["grad_norm"]) == (
            first[step]["loss"],
            first[step]["grad_norm"],
        )

    # one process, the same configs and global batch (2 ranks x 2 micro-batches x 2 sequences)
    model_cfg, train_cfg = ckpt.read_configs(run / "checkpoints" / "step-0000008")
    assert train_cfg.parallel == "fsdp"
    single = {}
    train_cfg = dataclasses.replace(train_cfg, batch_size=4, parallel="ddp", checkpoint_every=0)
    train(model_cfg, train_cfg, token_dir, tmp_path / "one", on_metrics=lambda m, s: single.update({s: m}))
    fsdp = first | again
    for step in range(1, 9):
        assert fsdp[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5), f"step {step}"

    # the consolidated weights: the same file layout as one process's, loadable and exportable
    ours, theirs = (r / "checkpoints" / "step-0000008" / ckpt.MODEL_FILE for r in (run, tmp_path / "one"))
    with safe_open(str(ours), "pt") as a, safe_open(str(theirs), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys()) and a.metadata() == b.metadata()
        for k in a.keys():  # noqa: SIM118 (safe_open is not a mapping)
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-4, atol=1e-6)
    exported = ckpt.export_for_inference(run, tmp_path / "export")
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        [ckpt.MANIFEST_FILE, ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.TOKENIZER_FILE]
    )
    loaded = ckpt.load_for_inference(exported)
    x = torch.randint(0, model_cfg.vocab_size, (1, 16))
    reference = ckpt.load_for_inference(tmp_path / "one").model
    torch.testing.assert_close(loaded.model(x)[0], reference(x)[0], rtol=1e-4, atol=1e-5)

    # a sharded checkpoint cannot be resumed by a single process: one line naming the fix
    with pytest.raises(CheckpointError, match="--nproc_per_node=2"):
        Trainer(model_cfg, dataclasses.replace(train_cfg, max_steps=9), token_dir, run, resume=True)


def small(**train):
    model = ModelConfig(n_layer=2, n_head=2, d_model=64, max_seq_len=32)
    cfg = TrainConfig(
        batch_size=4,
        max_steps=3,
        eval_batches=1,
        device="cpu",
        dtype="float32",
        log_every=1,
        eval_every=0,
        checkpoint_every=0,
    )
    return model, dataclasses.replace(cfg, **train)


def test_activation_checkpointing_changes_neither_losses_nor_gradients(token_dir, tmp_path):
    model_cfg, cfg = small()
    model_cfg = dataclasses.replace(model_cfg, vocab_size=512)
    torch.manual_seed(0)
    plain = build_model(model_cfg)
    recomputed = build_model(model_cfg)
    recomputed.load_state_dict(plain.state_dict())
    assert parallel.checkpoint_blocks(recomputed) == 2
    assert [n for n, _ in recomputed.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x = torch.randint(0, 512, (2, 17))
    for m in (plain, recomputed):
        m(x[:, :-1], x[:, 1:])[1].backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-8, msg=name)

    runs = {}
    for on in (False, True):  # the whole loop, with parallel=fsdp on one process (plain training)
        metrics = {}
        c = dataclasses.replace(cfg, activation_checkpointing=on, parallel="fsdp")
        train(
            model_cfg, c, token_dir, tmp_path / str(on), on_metrics=lambda m, s, d=metrics: d.update({s: m})
        )
        runs[on] = [metrics[s]["loss"] for s in (1, 2, 3)]
    assert runs[True] == pytest.approx(runs[False], rel=1e-6)


def test_unsupported_combinations_fail_in_one_line_naming_the_key(token_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'parallel'.*compile=false"):
        TrainConfig(parallel="fsdp", compile=True)
    with pytest.raises(ConfigError, match=r"'parallel'.*optimizer=muon.*set optimizer=adamw"):
        TrainConfig(parallel="fsdp", optimizer="muon")
    with pytest.raises(ConfigError, match=r"'parallel'.*choose one of ddp, fsdp"):
        TrainConfig(parallel="zero3")
    model_cfg, cfg = small()
    lstm = dataclasses.replace(model_cfg, arch="lstm")
    with pytest.raises(ConfigError, match=r"'parallel'.*use parallel=ddp"):
        Trainer(lstm, dataclasses.replace(cfg, parallel="fsdp"), token_dir, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"'activation_checkpointing'.*activation_checkpointing=false"):
        Trainer(lstm, dataclasses.replace(cfg, activation_checkpointing=True), token_dir, tmp_path / "b")
