"""How the model is spread over the processes of a `torchrun` job, and activation checkpointing.

`parallel=ddp` (the default): every rank holds the whole model and optimizer; DistributedDataParallel
all-reduces the gradients. Cheapest for small models.

`parallel=fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`). Each transformer block, then the root
(embeddings, final norm, head), becomes a group whose parameters are split along dim 0 over the
ranks (DTensors); a group is all-gathered for its forward and backward and freed after, and the
gradients are reduce-scattered, so each rank keeps 1/world of the weights, gradients and AdamW
state. Gradients are averaged like DDP's, so the losses match one process on the same global batch.
On one process (no torchrun) there is nothing to shard: `parallel=fsdp` then trains the plain model
and says so in the log, and its checkpoints are those of a single process.

Checkpoints of a sharded run hold each rank's own shard of the weights and of the optimizer
(`model.rank00000-of-00002.safetensors`, `optimizer.rank00000-of-00002.pt`, written by that rank)
for an exact resume, and the consolidated `model.safetensors` that rank 0 writes from the full state
dict, so export, evaluation, generation and Hugging Face export read the same files as after DDP.

`activation_checkpointing=true` runs each transformer block under `torch.utils.checkpoint`: its
activations are dropped after the forward and recomputed in the backward (less memory, about one
more forward of compute). It changes neither the losses nor the gradients.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from lm.config import ModelConfig, TrainConfig
from lm.errors import CheckpointError, ConfigError
from lm.runtime import Dist

log = logging.getLogger("forja.parallel")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of `model` (none for the LSTM)."""
    layers = getattr(model, "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def check_supported(model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """Combinations that cannot run, refused in one line naming the key and the fix."""
    if cfg.parallel == "fsdp" and model_cfg.arch != "transformer":
        raise ConfigError(
            f"invalid value 'fsdp' for 'parallel': it shards transformer blocks and arch={model_cfg.arch} "
            "has none; use parallel=ddp"
        )
    if cfg.activation_checkpointing and model_cfg.arch != "transformer":
        raise ConfigError(
            f"invalid value True for 'activation_checkpointing': arch={model_cfg.arch} has no transformer "
            "blocks to recompute; use activation_checkpointing=false"
        )


def checkpoint_blocks(model: nn.Module) -> int:
    """Run each block's forward under torch.utils.checkpoint (non-reentrant); return how many.

    The block keeps its parameters and their names (no wrapper module), so checkpoints, the
    optimizer and FSDP see the same model with the switch on or off."""
    found = blocks(model)
    for block in found:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(found)


def is_sharded(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: nothing was sharded
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def shard(model: nn.Module, device: torch.device, dist: Dist) -> nn.Module:
    """FSDP2: fully_shard each block, then the root; the module is changed in place and returned."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.world_size,))
    for block in blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, dist: Dist) -> nn.Module:
    """Activation checkpointing, then FSDP2 in place (before the optimizer is made: it must see
    the sharded parameters). Returns the model; DDP wraps later (`replicate`)."""
    if cfg.activation_checkpointing:
        log.info(
            "activation checkpointing: %d blocks recompute their activations in backward",
            checkpoint_blocks(model),
        )
    if cfg.parallel == "fsdp":
        if dist.enabled:
            shard(model, device, dist)
            log.info(
                "FSDP2: parameters, gradients and optimizer state sharded over %d ranks", dist.world_size
            )
        elif dist.is_main:
            log.info("parallel=fsdp on one process: nothing to shard, training the plain model")
    return model


def replicate(model: nn.Module, cfg: TrainConfig, device: torch.device, dist: Dist) -> nn.Module:
    """DDP around the (possibly compiled) forward model under torchrun with parallel=ddp."""
    if not dist.enabled or cfg.parallel != "ddp":
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def accumulating(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Around a micro-batch's forward and backward: with `skip_sync`, keep its gradients local
    (no all-reduce / reduce-scatter) until the last micro-batch of the step."""
    if skip_sync and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif skip_sync and is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients to `max_norm` and return their total norm (over every rank's shard)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if _is_dtensor(norm):
        norm = norm.full_tensor()
    return norm.item()


# --------------------------------------------------------------------------- sharded state


def _is_dtensor(t: Any) -> bool:
    """A sharded tensor (torch.distributed.tensor.DTensor), told without importing DTensor's module
    (seconds) into every process that only trains on one rank."""
    return hasattr(t, "to_local") and hasattr(t, "placements")


def _local(t: Any) -> Any:
    return t.to_local().detach().cpu().contiguous() if _is_dtensor(t) else t


def _unique_state(model: nn.Module) -> dict[str, Any]:
    """The state dict's entries as the module holds them, a tied weight under its first name only."""
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) not in seen:
            seen.add(id(v))
            out[k] = v
    return out


def local_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's shard of every weight (plain CPU tensors), by state-dict name."""
    return {k: _local(v) for k, v in _unique_state(model).items()}


def load_local_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = _unique_state(model)
    if set(own) != set(state):
        raise CheckpointError(
            f"{source} does not fit the model: missing {sorted(set(own) - set(state))}, "
            f"unexpected {sorted(set(state) - set(own))}"
        )
    with torch.no_grad():
        for name, param in own.items():
            local = param.to_local() if _is_dtensor(param) else param
            if local.shape != state[name].shape:
                raise CheckpointError(
                    f"{source}: {name} has shape {tuple(state[name].shape)}, not {tuple(local.shape)}"
                )
            local.copy_(state[name])


def local_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with every sharded tensor replaced by this rank's shard."""
    sd = optimizer.state_dict()
    return {
        "state": {i: {k: _local(v) for k, v in s.items()} for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }


def load_local_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of local_optimizer_state: each shard becomes a DTensor laid out like its parameter."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    restored = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        restored[int(i)] = {
            k: DTensor.from_local(
                v.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
            )
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.dim() > 0
            else v
            for k, v in s.items()
        }
    optimizer.load_state_dict({"state": restored, "param_groups": state["param_groups"]})


def full_model(model: nn.Module, model_cfg: ModelConfig, dist: Dist) -> nn.Module | None:
    """The whole model as a plain CPU module on rank 0 (None elsewhere), gathered from the shards:
    what `model.safetensors` is written from, so its file is the one DDP writes. All ranks call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lm.models import build_model

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        return None
    with torch.device("meta"):
        plain = build_model(model_cfg)
    aliases = {}  # tied weights: every name of a shared parameter -> its first name
    first: dict[int, str] = {}
    for name, p in plain.named_parameters(remove_duplicate=False):
        aliases[name] = first.setdefault(id(p), name)
    plain.load_state_dict(full, strict=True, assign=True)
    for name, owner in aliases.items():
        if name != owner:
            *path, leaf = name.split(".")
            setattr(plain.get_submodule(".".join(path)), leaf, plain.get_parameter(owner))
    return plain
