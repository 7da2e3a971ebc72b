"""Per-step overhead of drawing a batch from a weighted mixture (lm/mixture.py's MixtureSampler)
against the plain sampler over one token folder (lm/data.py's WindowSampler), in one run.

    python bench/mixture_bench.py [--batch 16] [--seq-len 128] [--sources 2] [--steps 2000]

Both samplers read the same tokens: the plain one all shards as one split, the mixture the same
shards split into `--sources` sources weighted 3:1:1:... Rounds of each alternate (so load on a
shared machine falls on both alike); the figure is the median over rounds of the mean ms per batch.
A training step of the tiny preset (batch 16, context 128 by default) is timed too, to say what share
of a step the difference is. Prints one JSON object: ms/batch of each, their ratio, the
difference, and that difference as a share of the training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch

from lm.bench import train_steps
from lm.config import get_preset
from lm.data import WindowSampler
from lm.mixture import MixtureSampler
from lm.models import build_model


def _ms_per_batch(sampler, batch: int, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        sampler.next_batch(batch)
    return (time.perf_counter() - t0) * 1e3 / steps


def _train_step_ms(batch: int, seq_len: int, vocab: int, steps: int = 3) -> float:
    preset = get_preset("tiny")
    cfg = dataclasses.replace(preset.model, vocab_size=vocab, max_seq_len=seq_len)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    _, times = train_steps(model, opt, [x] * (steps + 1), torch.device("cpu"), torch.float32)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sources", type=int, default=2)
    ap.add_argument("--shards", type=int, default=8, help="shards per source")
    ap.add_argument("--shard-tokens", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=2000, help="batches per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    per_source = [
        [rng.integers(0, args.vocab, args.shard_tokens, dtype=np.uint16) for _ in range(args.shards)]
        for _ in range(args.sources)
    ]
    weights = [3.0] + [1.0] * (args.sources - 1)
    plain = WindowSampler([s for shards in per_source for s in shards], args.seq_len, seed=0)
    mixed = MixtureSampler(
        [(f"s{i}", w, shards) for i, (w, shards) in enumerate(zip(weights, per_source, strict=True))],
        args.seq_len,
        seed=0,
    )
    _ms_per_batch(plain, args.batch, 50), _ms_per_batch(mixed, args.batch, 50)  # warm up
    plain_ms, mixed_ms = [], []
    for _ in range(args.rounds):
        plain_ms.append(_ms_per_batch(plain, args.batch, args.steps))
        mixed_ms.append(_ms_per_batch(mixed, args.batch, args.steps))
    p, m = statistics.median(plain_ms), statistics.median(mixed_ms)
    step = _train_step_ms(args.batch, args.seq_len, args.vocab)
    print(
        json.dumps(
            {
                "batch": args.batch,
                "seq_len": args.seq_len,
                "sources": args.sources,
                "plain_ms_per_batch": round(p, 4),
                "mixture_ms_per_batch": round(m, 4),
                "ratio": round(m / p, 3),
                "overhead_ms_per_batch": round(m - p, 4),
                "tiny_train_step_ms": round(step, 2),
                "overhead_share_of_step": round((m - p) / step, 5),
                "rounds_plain_ms": [round(x, 4) for x in plain_ms],
                "rounds_mixture_ms": [round(x, 4) for x in mixed_ms],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
