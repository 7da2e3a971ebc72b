"""Where and how the math runs: device, precision, distributed setup, measured matmul peak."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it, PyTorch emulates
    bf16 matmuls and they run many times slower than fp32, so `dtype=auto` keeps fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def pick_device(requested: str = "auto") -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device=cuda was asked for but torch sees no CUDA device; use --set device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast for matmuls (weights and optimizer stay fp32), or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.cache
def matmul_peak_flops(device_type: str, dtype: torch.dtype, n: int = 1024, seconds: float = 0.5) -> float:
    """Measured dense matmul throughput (FLOP/s) of an n x n x n product: the denominator of MFU."""
    device = torch.device(device_type)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    iters, t0 = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2.0 * n**3 * iters / elapsed


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that `torchrun` describes in the environment (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def all_reduce_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= d.world_size
    return x


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
