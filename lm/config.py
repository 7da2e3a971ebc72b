"""Configuration of the model and of training: two dataclasses, named presets, `key=value` overrides.

Every field is validated when the object is built (`__post_init__`), so a bad value fails at once
with a `ConfigError` naming the key, instead of deep inside a training step.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal

from lm.errors import ConfigError
from lm.overrides import dataclass_settings, parse_sets, parse_value, split_assignment

Arch = Literal["transformer", "lstm"]
Mlp = Literal["swiglu", "relu2"]
Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16"]
Schedule = Literal["cosine", "linear", "constant", "wsd"]
Optimizer = Literal["adamw", "muon"]
Parallel = Literal["ddp", "fsdp"]


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value {value!r} for '{key}': {why}")


def _check_literals(obj: Any) -> None:
    """Check every `Literal[...]` field against its allowed values."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else None
        if allowed:
            value = getattr(obj, f.name)
            _require(value in allowed, f.name, value, f"choose one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. The defaults describe the Llama-style block (see lm/model.py)."""

    arch: Arch = "transformer"
    vocab_size: int = 0  # 0: take it from the tokenizer of the training data
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0: same as n_head (plain multi-head attention); fewer: grouped-query attention
    d_model: int = 256
    ffn_hidden: int = 0  # 0: Llama's rule, 2/3 of 4*d_model rounded up to a multiple of 64
    max_seq_len: int = 256
    mlp: Mlp = "swiglu"
    qk_norm: bool = False
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_literals(self)
        for key in ("n_layer", "n_head", "d_model", "max_seq_len"):
            _require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        _require(self.vocab_size >= 0, "vocab_size", self.vocab_size, "must be >= 0 (0 = from the tokenizer)")
        _require(self.ffn_hidden >= 0, "ffn_hidden", self.ffn_hidden, "must be >= 0 (0 = Llama's rule)")
        if self.arch == "transformer":
            _require(
                self.d_model % self.n_head == 0,
                "d_model",
                self.d_model,
                f"must be divisible by n_head={self.n_head}",
            )
            _require(
                self.head_dim % 2 == 0, "d_model", self.d_model, "d_model / n_head must be even for RoPE"
            )
            kv = self.kv_heads
            _require(
                1 <= kv <= self.n_head and self.n_head % kv == 0,
                "n_kv_head",
                self.n_kv_head,
                f"must divide n_head={self.n_head} (0 = n_head)",
            )
        _require(self.rope_theta > 0, "rope_theta", self.rope_theta, "must be > 0")
        _require(self.norm_eps > 0, "norm_eps", self.norm_eps, "must be > 0")
        _require(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.mlp == "relu2":
            return 4 * self.d_model
        return 64 * math.ceil(int(2 * 4 * self.d_model / 3) / 64)

    @property
    def shape(self) -> str:
        """A short name of the shape, e.g. `6x384`, used by benchmarks and run names."""
        return f"{self.n_layer}x{self.d_model}" + ("-lstm" if self.arch == "lstm" else "")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: batch, schedule, optimiser, precision, evaluation and checkpoints."""

    seq_len: int = 0  # 0: the model's max_seq_len
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimiser step
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # 0: no clipping
    eval_every: int = 200  # 0: only at the end
    eval_batches: int = 20  # 0: the whole validation split
    checkpoint_every: int = 500  # 0: only at the end
    keep_last: int = 2  # checkpoints kept; older ones are deleted
    log_every: int = 10
    seed: int = 1337
    device: Device = "auto"
    dtype: Dtype = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 matmuls, else fp32
    compile: bool = False
    max_time_s: float = 0.0  # 0: no limit; else stop (and checkpoint) after this many seconds
    parallel: Parallel = "ddp"  # under torchrun: ddp (replicas) or fsdp (FSDP2 shards); see lm/parallel.py
    activation_checkpointing: bool = False  # recompute each transformer block's activations in backward
    # the optimiser and the schedule's shape (lm/optim.py)
    optimizer: Optimizer = "adamw"  # muon: Muon on the hidden matrices, AdamW (at lr) on the rest
    muon_lr: float = 0.02  # Muon's peak learning rate (optimizer=muon)
    muon_momentum: float = 0.95
    decay_fraction: float = 0.2  # schedule=wsd: the last fraction of max_steps decays to min_lr_ratio

    def __post_init__(self) -> None:
        _check_literals(self)
        for key in ("batch_size", "grad_accum", "max_steps", "log_every", "keep_last"):
            _require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        for key in ("seq_len", "warmup_steps", "eval_every", "eval_batches", "checkpoint_every"):
            _require(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "must be a finite number > 0")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        for key in ("beta1", "beta2"):
            _require(0.0 <= getattr(self, key) < 1.0, key, getattr(self, key), "must be in [0, 1)")
        _require(self.adam_eps > 0, "adam_eps", self.adam_eps, "must be > 0")
        _require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 = no clipping)")
        _require(self.max_time_s >= 0, "max_time_s", self.max_time_s, "must be >= 0 (0 = no limit)")
        _require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        _require(
            not (self.parallel == "fsdp" and self.compile),
            "parallel",
            self.parallel,
            "fsdp does not run with compile=true here; set compile=false or parallel=ddp",
        )
        _require(  # Newton-Schulz needs each whole matrix; FSDP gives a rank a slice of it
            not (self.parallel == "fsdp" and self.optimizer == "muon"),
            "parallel",
            self.parallel,
            "fsdp does not run with optimizer=muon (Muon orthogonalises whole matrices, FSDP shards them); "
            "set optimizer=adamw or parallel=ddp",
        )
        _require(
            math.isfinite(self.muon_lr) and self.muon_lr > 0,
            "muon_lr",
            self.muon_lr,
            "must be a finite number > 0",
        )
        _require(0.0 <= self.muon_momentum < 1.0, "muon_momentum", self.muon_momentum, "must be in [0, 1)")
        _require(0.0 < self.decay_fraction <= 1.0, "decay_fraction", self.decay_fraction, "must be in (0, 1]")


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig
    about: str = ""


PRESETS: dict[str, Preset] = {
    # Sized for time to quality on 2 CPU cores: Muon on the hidden matrices, warmup-stable-decay,
    # no evaluation before the end (bench/README.md, "Time to quality"). 200 steps: 2.29 held-out
    # bits per byte on tinyshakespeare in 78 s of the whole pipeline on 2 AVX-512 cores with native
    # bf16 (120 steps: 2.33; no setting of 120 steps reached 2.30). AVX2 cores: about twice as long (from their 120-step times).
    # Also what the CPU demo uses; tests shrink it further with --set.
    "tiny": Preset(
        ModelConfig(n_layer=2, n_head=4, d_model=256, max_seq_len=128, tie_embeddings=True),
        TrainConfig(
            batch_size=16,
            max_steps=200,
            lr=2e-3,
            warmup_steps=20,
            eval_every=0,
            eval_batches=16,
            checkpoint_every=50,
            optimizer="muon",
            muon_lr=0.04,
            schedule="wsd",
            decay_fraction=0.3,
        ),
        "2x256 transformer, context 128: CPU demos and tests",
    ),
    "small": Preset(
        ModelConfig(n_layer=6, n_head=6, d_model=384, max_seq_len=256),
        TrainConfig(
            batch_size=16, max_steps=5000, lr=1e-3, warmup_steps=200, eval_every=250, checkpoint_every=500
        ),
        "6x384 transformer, context 256: a real run on one GPU or a patient CPU",
    ),
    "gpt2-124m": Preset(
        ModelConfig(n_layer=12, n_head=12, d_model=768, max_seq_len=1024, tie_embeddings=True),
        TrainConfig(
            batch_size=16,
            grad_accum=8,
            max_steps=20000,
            lr=6e-4,
            warmup_steps=700,
            eval_every=500,
            eval_batches=50,
            checkpoint_every=1000,
        ),
        "GPT-2 small sized (12x768, context 1024, about 124M parameters with a 50k vocabulary): GPUs",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        raise ConfigError(
            f"unknown preset {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; choose one of: {', '.join(PRESETS)}"
        )
    return PRESETS[name]


# --------------------------------------------------------------------------- overrides


def apply_overrides(
    model: ModelConfig, train: TrainConfig, items: list[str] | dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """Return copies of the configs with `key=value` overrides applied.

    Keys are bare field names (`max_steps`) or prefixed (`model.n_layer`, `train.lr`). Values are
    strings parsed by the field's type, or already-typed values (from a dict). An unknown key or a
    bad value raises a ConfigError that names it (the parser is lm/overrides.py, shared by every
    command).
    """
    groups = {"model": dataclass_settings(ModelConfig), "train": dataclass_settings(TrainConfig)}
    changes = parse_sets(items, groups)
    return dataclasses.replace(model, **changes["model"]), dataclasses.replace(train, **changes["train"])


def to_dict(model: ModelConfig, train: TrainConfig) -> dict[str, dict[str, Any]]:
    return {"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}


def from_dict(d: dict[str, dict[str, Any]]) -> tuple[ModelConfig, TrainConfig]:
    """Inverse of `to_dict`; unknown keys (from a newer Forja) are an error naming them."""
    out = []
    for cls, part in ((ModelConfig, "model"), (TrainConfig, "train")):
        data = dict(d.get(part, {}))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {part} setting(s) in saved config: {', '.join(unknown)}")
        out.append(cls(**data))
    return out[0], out[1]


def flatten(model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """`{"model.n_layer": 4, ..., "train.lr": 0.003, ...}`: the form MLflow params take."""
    return {f"{part}.{k}": v for part, sub in to_dict(model, train).items() for k, v in sub.items()}


__all__ = [
    "PRESETS",
    "ModelConfig",
    "Preset",
    "TrainConfig",
    "apply_overrides",
    "flatten",
    "from_dict",
    "get_preset",
    "parse_value",
    "split_assignment",
    "to_dict",
]
