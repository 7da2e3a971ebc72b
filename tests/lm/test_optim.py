"""lm/optim.py against independent references: the SVD, torch's AdamW, hand-computed schedules."""

import dataclasses

import pytest
import torch
from support import small_configs, torch_threads

from lm.config import TrainConfig
from lm.errors import ConfigError
from lm.model import Transformer
from lm.optim import MuonAdamW, lr_at, make_optimizer, newton_schulz, set_lr


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices: one torch thread, no OpenMP hand-offs (which crawl on a shared machine)."""
    with torch_threads(1):
        yield


@pytest.mark.parametrize("shape", [(48, 130), (130, 48), (64, 64)])
def test_newton_schulz_keeps_the_singular_vectors_and_brings_the_values_near_one(shape):
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -1.5, k, dtype=torch.float64)  # condition number about 30
    g = u @ torch.diag(s) @ v.T
    o = newton_schulz(g)
    assert o.shape == g.shape and o.dtype == g.dtype
    # in g's singular bases o is diagonal (same singular vectors) ...
    d = u.T @ o @ v
    assert torch.allclose(d, torch.diag(torch.diagonal(d)), atol=1e-6)
    # ... with every singular value pulled from [1/30, 1] into the quintic's band near 1
    sv = torch.diagonal(d)
    assert sv.min() > 0.6 and sv.max() < 1.2, sv


def test_the_adamw_groups_of_muonadamw_step_like_torch_adamw():
    torch.manual_seed(0)
    w = torch.randn(5, 7)
    gain = torch.randn(7)
    a = [w.clone().requires_grad_(), gain.clone().requires_grad_()]
    b = [w.clone().requires_grad_(), gain.clone().requires_grad_()]
    ours = MuonAdamW([{"params": a, "lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}])
    ref = torch.optim.AdamW(b, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    x = torch.randn(3, 5)
    for _ in range(5):
        for params, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            ((x @ params[0] * params[1]).sin().sum()).backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6, rtol=1e-5) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], w)


def test_a_muon_step_is_the_orthogonalised_gradient_scaled_by_lr():
    torch.manual_seed(0)
    w = torch.randn(96, 32)  # tall: Keller's scale sqrt(96 / 32)
    p = w.clone().requires_grad_()
    opt = MuonAdamW([{"params": [p], "muon": True, "lr": 0.02, "weight_decay": 0.5}])
    x = torch.randn(8, 32)
    (p @ x.T).square().sum().backward()
    u, _, vh = torch.linalg.svd(p.grad, full_matrices=False)
    opt.step()
    step = (w * (1 - 0.02 * 0.5) - p.detach()) / (0.02 * 3**0.5)
    # the gradient has rank 8: the step lives in its 8 singular directions, each near 1
    d = u.T @ step @ vh.T
    assert torch.allclose(d, torch.diag(torch.diagonal(d)), atol=1e-4)
    assert torch.diagonal(d)[:8].min() > 0.6 and torch.diagonal(d)[:8].max() < 1.2
    assert opt.state[p]["momentum_buffer"].equal(p.grad)


def test_muon_decreases_the_loss_of_a_small_regression():
    torch.manual_seed(0)
    x, target = torch.randn(256, 16), 0.2 * torch.randn(16, 24)
    y = x @ target
    w = torch.zeros(16, 24, requires_grad=True)
    opt = MuonAdamW([{"params": [w], "muon": True, "lr": 0.05, "weight_decay": 0.0}])
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (x @ w - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_wsd_schedule_at_hand_computed_steps():
    _, cfg = small_configs(
        max_steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2
    )
    # warmup 0..9, stable 10..79, decay over the last 20 steps (80..99) towards 1e-4
    expected = {0: 1e-4, 9: 1e-3, 10: 1e-3, 79: 1e-3, 80: 1e-3, 90: 0.55e-3, 99: 0.145e-3, 100: 1e-4}
    assert {s: lr_at(s, cfg) for s in expected} == pytest.approx(expected)


def test_muon_groups_and_their_learning_rates():
    model_cfg, cfg = small_configs(optimizer="muon", muon_lr=0.03, lr=2e-3, warmup_steps=10)
    m = Transformer(dataclasses.replace(model_cfg, vocab_size=512, tie_embeddings=False))
    opt = make_optimizer(m, cfg, torch.device("cpu"))
    kind = {id(p): (g["muon"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    for name, p in m.named_parameters():
        hidden = p.dim() == 2 and not name.startswith(("embed_tokens", "lm_head"))
        assert kind[id(p)] == (hidden, 0.1 if p.dim() == 2 and "embed" not in name else 0.0), name
    set_lr(opt, 4, cfg)  # half way through the warmup
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1e-3, 1e-3, 0.015])


@pytest.mark.parametrize(
    "key, value",
    [
        ("optimizer", "sgd"),
        ("muon_lr", 0.0),
        ("muon_momentum", 1.0),
        ("decay_fraction", 0.0),
        ("schedule", "step"),
    ],
)
def test_bad_optimizer_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig(**{key: value})
