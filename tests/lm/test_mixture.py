"""Weighted mixtures: the sampler's proportions, determinism and exact resume; the mixture folder."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support import small_configs

from lm import checkpoint as ckpt
from lm.data import TokenData
from lm.errors import DataError
from lm.mixture import MixtureSampler, assign, write_mixture
from lm.train import train


def sources(weights=(3.0, 1.0)):
    """Sources whose token ids say where they came from: source i holds ids i*1000 + position."""
    return [
        (f"s{i}", w, [np.arange(i * 1000, i * 1000 + 500 + 37 * i, dtype=np.uint16)])
        for i, w in enumerate(weights)
    ]


def origin(batch):
    return batch[:, 0] // 1000


def test_assignment_follows_the_weights_at_every_step():
    weights = [0.5, 0.3, 0.2]
    picks, counts = assign(weights, [0, 0, 0], 1000)
    running = np.zeros(3)
    for n, i in enumerate(picks, 1):
        running[i] += 1
        assert np.all(np.abs(running - n * np.array(weights)) < 1.0)  # never a window off
    assert counts == [500, 300, 200]
    # in pieces it is the same sequence: a pure function of the weights and the windows drawn so far
    first, mid = assign(weights, [0, 0, 0], 333)
    rest, end = assign(weights, mid, 667)
    assert first + rest == picks and end == counts


def test_batches_come_from_each_source_by_weight_and_tokens_are_counted():
    s = MixtureSampler(sources((3.0, 1.0)), seq_len=16, seed=0)
    got = np.concatenate([origin(s.next_batch(8)) for _ in range(50)])
    assert np.bincount(got).tolist() == [300, 100]
    assert s.tokens_seen() == {"tokens/s0": 300 * 16.0, "tokens/s1": 100 * 16.0}


def test_mixture_sampler_is_deterministic_and_resumes_exactly():
    a = MixtureSampler(sources(), 16, seed=3)
    straight = [a.next_batch(8) for _ in range(40)]  # crosses epochs of both sources
    b = MixtureSampler(sources(), 16, seed=3)
    first = [b.next_batch(8) for _ in range(13)]
    c = MixtureSampler(sources(), 16, seed=3)
    c.load_state_dict(b.state_dict())
    rest = [c.next_batch(8) for _ in range(27)]
    assert all(np.array_equal(x, y) for x, y in zip(straight, first + rest, strict=True))
    assert not np.array_equal(MixtureSampler(sources(), 16, seed=4).next_batch(8), straight[0])


def test_ranks_read_disjoint_slices_of_the_mixture_batch():
    single = MixtureSampler(sources(), 16, seed=5).next_batch(8)
    ranks = [MixtureSampler(sources(), 16, seed=5, rank=r, world_size=2).next_batch(4) for r in range(2)]
    assert np.array_equal(np.concatenate(ranks), single)


def test_state_of_another_mixture_is_refused():
    s = MixtureSampler(sources((3.0, 1.0)), 16, seed=1)
    with pytest.raises(DataError, match="resume with the run's own sources"):
        MixtureSampler(sources((1.0, 1.0)), 16, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(DataError, match="positive"):
        MixtureSampler(sources((1.0, 0.0)), 16, seed=1)


@pytest.fixture(scope="module")
def mixture_dir(token_dir, tmp_path_factory):
    """The shared token folder twice, weighted 3:1 (a mixture needs one tokenizer; two names suffice)."""
    return write_mixture(tmp_path_factory.mktemp("mix"), [("big", 3.0, token_dir), ("small", 1.0, token_dir)])


def test_mixture_folder_opens_as_its_sources_together(mixture_dir, token_dir):
    mix, one = TokenData.open(mixture_dir), TokenData.open(token_dir)
    assert [(s.name, s.weight) for s in mix.sources] == [("big", 0.75), ("small", 0.25)]
    assert mix.splits["val"].n_tokens == 2 * one.splits["val"].n_tokens
    assert mix.tokenizer_sha256 == one.tokenizer_sha256 and mix.tokenizer_path.is_file()
    assert (
        write_mixture(mixture_dir.parent, [("big", 3.0, token_dir), ("small", 1.0, token_dir)]) == mixture_dir
    )


@pytest.mark.slow
def test_mixture_training_resumes_bitwise_and_logs_per_source_figures(mixture_dir, tmp_path):
    model, cfg = small_configs(max_steps=20, checkpoint_every=10, eval_every=10)
    straight, half, resumed = {}, {}, {}
    r1 = train(model, cfg, mixture_dir, tmp_path / "a", on_metrics=lambda m, s: straight.__setitem__(s, m))
    train(
        model,
        cfg,
        mixture_dir,
        tmp_path / "b",
        on_metrics=lambda m, s: half.__setitem__(s, m),
        should_stop=lambda s: s == 10,
    )
    r2 = train(
        model,
        cfg,
        mixture_dir,
        tmp_path / "b",
        resume=True,
        on_metrics=lambda m, s: resumed.__setitem__(s, m),
    )
    assert [straight[s]["loss"] for s in range(11, 21)] == [resumed[s]["loss"] for s in range(11, 21)]
    w1, w2 = (load_file(str(r.checkpoint / ckpt.MODEL_FILE)) for r in (r1, r2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    last = straight[20]
    assert last["tokens/big"] == 3 * last["tokens/small"] == 0.75 * 20 * cfg.batch_size * model.max_seq_len
    # the same text under two names: the same figures, and the overall one equal to both
    assert last["val_bpb/big"] == pytest.approx(last["val_bpb/small"])
    assert last["val_bpb"] == pytest.approx(last["val_bpb/big"])
    assert resumed[20]["tokens/big"] == last["tokens/big"]
