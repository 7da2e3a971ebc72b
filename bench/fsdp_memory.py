"""Memory per rank, DDP against FSDP2 (and FSDP2 with activation checkpointing), at one shape: three
`torchrun --nproc_per_node=N` launches on CPU.

    python bench/fsdp_memory.py                              # 8x512, vocab 32000, 2 ranks, 3 steps
    python bench/fsdp_memory.py --shape 12x768 --nproc 2 --steps 3

Each launch builds the model of `--shape`, wraps it the way the trainer does (lm/parallel.py: DDP, or
FSDP2 with each block then the root sharded), makes the trainer's AdamW and takes `--steps` training
steps on random tokens (gloo). Every rank then reports
  state_mb     bytes this rank holds of parameters, gradients and AdamW state (the local shards
               under FSDP: what sharding divides by the world size)
  peak_rss_mb  its peak resident memory (getrusage) over the whole launch
  base_rss_mb  its resident memory after torch and the process group started, before the model
and the script prints one JSON line per setting and each setting's figures against DDP's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("ddp", False), ("fsdp", False), ("fsdp", True)]  # (parallel, activation_checkpointing)
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch
    import torch.distributed as dist

    from lm import parallel
    from lm.config import ModelConfig, TrainConfig
    from lm.models import build_model
    from lm.runtime import init_distributed
    from lm.train import make_optimizer

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    torch.set_num_threads(1)
    device = torch.device("cpu")
    d = init_distributed(device)
    base = rss_mb()
    n_layer, d_model = map(int, args.shape.split("x"))
    model_cfg = ModelConfig(
        n_layer=n_layer,
        d_model=d_model,
        n_head=d_model // 64,
        vocab_size=args.vocab,
        max_seq_len=args.seq_len,
    )
    cfg = TrainConfig(
        parallel=args.parallel,
        activation_checkpointing=args.ac,
        device="cpu",
        dtype="float32",
        batch_size=args.batch,
    )
    torch.manual_seed(0)
    model = build_model(model_cfg)
    parallel.wrap(model, cfg, device, d)
    optimizer = make_optimizer(model, cfg, device)
    forward = parallel.replicate(model, cfg, device, d)
    g = torch.Generator().manual_seed(d.rank)
    for _ in range(args.steps):
        w = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=g)
        _, loss = forward(w[:, :-1], w[:, 1:])
        loss.backward()
        parallel.clip_grad_norm(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradients: they count in the state

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    state = sum(local_bytes(p) for p in params)
    state += sum(local_bytes(p.grad) for p in params if p.grad is not None)
    state += sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    mine = {"rank": d.rank, "state_mb": state / 2**20, "peak_rss_mb": rss_mb(), "base_rss_mb": base}
    every = [None] * d.world_size
    dist.all_gather_object(every, mine)
    if d.is_main:
        n = sum(p.numel() for p in params)
        Path(args.out).write_text(
            json.dumps(
                {"parallel": args.parallel, "activation_checkpointing": args.ac, "params": n, "ranks": every}
            )
        )
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8x512", help="n_layer x d_model (heads of 64)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--parallel", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    p.add_argument("--ac", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.parallel:  # a torchrun worker
        worker(args)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting, ac in SETTINGS:
            out = Path(tmp) / f"{setting}-{ac}.json"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={args.nproc}",
            ]
            command += [__file__, "--parallel", setting, "--out", str(out), "--shape", args.shape]
            command += [
                "--vocab",
                str(args.vocab),
                "--seq-len",
                str(args.seq_len),
                "--batch",
                str(args.batch),
            ]
            command += ["--steps", str(args.steps)] + (["--ac"] if ac else [])
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            res = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
            if res.returncode != 0:
                sys.exit(f"error: the {setting} launch failed:\n{res.stderr[-3000:]}")
            name = setting + ("+ac" if ac else "")
            results[name] = json.loads(out.read_text())
            print(json.dumps(results[name]))
    for key in ("state_mb", "peak_rss_mb"):
        largest = {name: max(r[key] for r in res["ranks"]) for name, res in results.items()}
        figures = ", ".join(f"{name} {mb:.0f} MB ({mb / largest['ddp']:.2f})" for name, mb in largest.items())
        print(f"{key} per rank (largest rank; ratio to ddp): {figures}")


if __name__ == "__main__":
    main()
