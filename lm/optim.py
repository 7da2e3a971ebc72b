"""Optimisers and the learning-rate schedule: AdamW, or Muon for the hidden matrices with AdamW for
the rest, and warmup followed by cosine, linear, constant or warmup-stable-decay.

Muon (Keller Jordan, 2024, https://kellerjordan.github.io/posts/muon/; the optimiser of the
modded-nanogpt speedrun) keeps SGD momentum for each 2-D weight matrix of the hidden layers and
replaces the update by its nearest semi-orthogonal matrix, computed with a few Newton-Schulz
iterations. Embeddings, the output head and the norm gains stay with AdamW, as in the speedrun.

torch ships `torch.optim.Muon`, but it runs the iterations in bfloat16, which this project's CPUs
emulate slowly (a 256 x 256 matrix takes 15x longer than in fp32), and it takes 2-D parameters only.
`MuonAdamW` below is one `torch.optim.Optimizer` over both kinds of group, in fp32, so a checkpoint
holds one `state_dict` and resumes exactly.
"""

from __future__ import annotations

import math

import torch

from lm.config import TrainConfig

# Keller Jordan's quintic coefficients: steepest slope at 0, singular values land in about [0.68, 1.13].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def lr_at(step: int, cfg: TrainConfig, peak: float | None = None) -> float:
    """Learning rate of optimiser step `step` (0-based) for peak rate `peak` (default cfg.lr).

    Linear warmup over warmup_steps, then: cosine or linear decay to peak * min_lr_ratio over the
    rest, constant, or `wsd` (warmup-stable-decay): constant until the last decay_fraction of
    max_steps, then linear decay to peak * min_lr_ratio.
    """
    lr = cfg.lr if peak is None else peak
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return lr
    start = cfg.warmup_steps
    if cfg.schedule == "wsd":
        start = max(start, cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps))
        if step < start:
            return lr
    progress = min(1.0, (step - start) / max(1, cfg.max_steps - start))
    floor = lr * cfg.min_lr_ratio
    if cfg.schedule in ("linear", "wsd"):
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> None:
    """Give every parameter group the schedule's rate for its peak (`peak_lr`, else cfg.lr)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg, group.get("peak_lr"))


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with g's singular vectors (U S' V^T, S' near 1).

    g is scaled to spectral norm <= 1 (by its Frobenius norm), then each iteration maps every
    singular value s to a s + b s^3 + c s^5; the Gram matrix is taken on the smaller side.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups marked `muon: True`, AdamW for the others, with one state_dict.

    Muon group keys: lr, momentum, nesterov, ns_steps, weight_decay. AdamW group keys: lr, betas,
    eps, weight_decay. Weight decay is decoupled in both (p <- p - lr * wd * p).
    """

    def __init__(self, groups: list[dict]):
        for group in groups:
            if group.get("muon"):
                bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if bad:
                    raise ValueError(f"Muon takes 2-D matrices only, got shapes {bad}")
                group.setdefault("momentum", 0.95)
                group.setdefault("nesterov", True)
                group.setdefault("ns_steps", 5)
            else:
                group["muon"] = False
                group.setdefault("betas", (0.9, 0.95))
                group.setdefault("eps", 1e-8)
        super().__init__(groups, {"lr": 1e-3, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["muon"] else self._adamw)(p, group)
        return loss

    def _muon(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf, beta = state["momentum_buffer"], group["momentum"]
        buf.mul_(beta).add_(p.grad)
        update = p.grad.add(buf, alpha=beta) if group["nesterov"] else buf
        update = newton_schulz(update, group["ns_steps"])
        # Keller's scale: tall matrices (more outputs than inputs) take proportionally larger steps
        scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
        p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"] * scale)

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"].item()
        (beta1, beta2), g = group["betas"], p.grad
        state["exp_avg"].lerp_(g, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (state["exp_avg_sq"] / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
        p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1.0 - beta1**t))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser cfg.optimizer names, over the model's trainable parameters.

    adamw: torch's AdamW (fused where it can be), weight decay on the weight matrices only (not on
    norms or embeddings). muon: `MuonAdamW`, Muon at cfg.muon_lr on the 2-D matrices of the hidden
    layers, AdamW at cfg.lr on the embeddings, the output head (tied or not) and the norm gains.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    outputs = {id(head.weight)} if head is not None else set()
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied weight once
    matrices = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
    if cfg.optimizer == "muon":
        hidden = [p for p in matrices if p.dim() == 2 and id(p) not in outputs]
        ids = {id(p) for p in hidden}
        rest = [p for p in params if id(p) not in ids]
        adam = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.adam_eps}
        groups = [
            {"params": hidden, "muon": True, "lr": cfg.muon_lr, "peak_lr": cfg.muon_lr}
            | {"momentum": cfg.muon_momentum, "weight_decay": cfg.weight_decay},
            {"params": [p for p in rest if p.dim() >= 2 and id(p) not in embeddings], "lr": cfg.lr}
            | adam
            | {"weight_decay": cfg.weight_decay},
            {"params": [p for p in rest if p.dim() < 2 or id(p) in embeddings], "lr": cfg.lr}
            | adam
            | {"weight_decay": 0.0},
        ]
        return MuonAdamW([g for g in groups if g["params"]])
    ids = {id(p) for p in matrices}
    groups = [
        {"params": matrices, "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, **kwargs)
