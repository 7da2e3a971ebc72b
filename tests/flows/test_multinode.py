"""Multi-node training through the train task: two torchrun launches on this machine, as two nodes
meeting at a c10d rendezvous (gloo on CPUs), train as one process does on the same global batch."""

import json
import threading

import pytest
from support import free_port

from flows.params import PipelineParams, apply_sets
from flows.pipeline import train_task
from lm.config import apply_overrides, get_preset, to_dict
from lm.data import TokenData
from lm.errors import ConfigError
from lm.train import resolve_configs

SMALL = {
    "n_layer": 2,
    "d_model": 64,
    "n_head": 2,
    "max_seq_len": 32,
    "device": "cpu",
    "dtype": "float32",
    "log_every": 1,
    "eval_every": 0,
    "checkpoint_every": 0,
    "max_steps": 4,
}


def config(token_dir, batch_size):
    preset = get_preset("tiny")
    model_cfg, train_cfg = apply_overrides(preset.model, preset.train, SMALL | {"batch_size": batch_size})
    return to_dict(*resolve_configs(model_cfg, train_cfg, TokenData.open(token_dir)))


def launch(nproc=1, nnodes=1, node_rank=0, rdzv_endpoint=None):
    return {"nproc": nproc, "nnodes": nnodes, "node_rank": node_rank, "rdzv_endpoint": rdzv_endpoint}


def losses(run_dir):
    return {
        r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    }


@pytest.mark.slow
def test_two_nodes_train_like_one_process_on_the_same_global_batch(token_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = tmp_path / "one"
    single = train_task.fn(str(token_dir), str(one), config(token_dir, 8), None, launch(), None, key="k1")
    assert single["step"] == 4

    two = tmp_path / "two"  # one folder both nodes see, as shared storage would be
    endpoint = f"127.0.0.1:{free_port()}"
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def node(rank: int) -> None:
        try:
            results[rank] = train_task.fn(
                str(token_dir),
                str(two),
                config(token_dir, 4),
                None,
                launch(1, 2, rank, endpoint),
                None,
                key="k2",
            )
        except BaseException as e:
            errors.append(e)

    nodes = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in nodes:
        t.start()
    for t in nodes:
        t.join(timeout=240)
    assert not errors, errors
    assert results[0]["checkpoint_sha256"] == results[1]["checkpoint_sha256"]
    assert results[0]["step"] == 4
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), f"step {step}"


def test_several_nodes_need_a_rendezvous_endpoint_and_a_rank_below_nnodes(tmp_path):
    params = PipelineParams(sources=[str(tmp_path)])
    with pytest.raises(ConfigError, match=r"run\.rdzv_endpoint"):
        apply_sets(params, ["run.nnodes=2"]).validate_all()
    with pytest.raises(ConfigError, match=r"run\.node_rank"):
        apply_sets(
            params, ["run.nnodes=2", "run.node_rank=2", "run.rdzv_endpoint=127.0.0.1:29400"]
        ).validate_all()
