"""Weighted mixtures of token folders: the sampler that draws training windows from each source by
its weight, and the mixture folder that names the sources.

Mixture folder (what `forja run --source NAME=PATH:WEIGHT ...` writes, and `TokenData.open` reads):

    manifest.json      format "forja-mixture"; per source: name, weight, the path of its token
                       folder (relative to this folder), its digest; the shared tokenizer's digest
    tokenizer.model    the one tokenizer every source was encoded with

Which source a window comes from is decided by the largest deficit: window n (counting from 0,
over the whole run and every rank) goes to the source i with the largest w_i * (n + 1) - c_i, where
c_i counts the windows source i got so far (ties to the first source). The counts never stray from
w_i * n by a window or more, so the tokens seen per source follow the weights at every step, not
only on average; and the assignment is a pure function of (weights, n), with no random numbers.
Within a source, windows come from that source's own `WindowSampler` (seeded shuffles, epochs).
The state, counts and each source's (epoch, cursor), goes into the checkpoint: a resumed run reads
exactly the batches it would have read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lm.data import FORMAT, MANIFEST, MIX_FORMAT, TOKENIZER, TokenData, WindowSampler
from lm.errors import DataError
from lm.fileio import atomic_path, atomic_write_json, sha256_json


def normalise(weights: list[float]) -> list[float]:
    """Weights as shares summing to 1 (each must be positive and finite)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"mixture weights must be positive numbers; got {list(weights)}")
    return (w / w.sum()).tolist()


def assign(weights: list[float], counts: list[int], n: int) -> tuple[list[int], list[int]]:
    """The sources of the next `n` windows (largest deficit first), and the counts after them."""
    w, c = [float(x) for x in weights], [int(x) for x in counts]
    drawn, out = sum(c), []
    sources = range(len(w))
    for _ in range(n):
        drawn += 1
        i = max(sources, key=lambda j: w[j] * drawn - c[j])  # the first of equal deficits
        c[i] += 1
        out.append(i)
    return out, c


class MixtureSampler:
    """(x, y) windows from several sources, each drawn as often as its weight says.

    `sources` is a list of (name, weight, shards of its train split). Like `WindowSampler`, every
    data-parallel rank holds the same state and draws the same global batch of
    `batch_size * world_size` windows; rank r takes the r-th slice.
    """

    def __init__(
        self,
        sources: list[tuple[str, float, list[np.ndarray]]],
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.names = [name for name, _, _ in sources]
        self.weights = normalise([w for _, w, _ in sources])
        self.T, self.seed, self.rank, self.world_size = seq_len, seed, rank, world_size
        self.samplers = []
        for name, _, shards in sources:
            try:
                self.samplers.append(WindowSampler(shards, seq_len, seed))
            except DataError as e:
                raise DataError(f"source {name}: {e}") from None
        self.counts = [0] * len(sources)

    def tokens_seen(self) -> dict[str, float]:
        """Training tokens drawn from each source so far (all ranks): `tokens/<NAME>`."""
        return {f"tokens/{n}": float(c * self.T) for n, c in zip(self.names, self.counts, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "weights": self.weights,
            "counts": list(self.counts),
            "sources": [s.state_dict() for s in self.samplers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "names" not in state:
            raise DataError(
                "the checkpoint was trained on one token folder, not on a mixture; resume with the run's own data"
            )
        theirs = {n: round(w, 9) for n, w in zip(state["names"], state["weights"], strict=True)}
        ours = {n: round(w, 9) for n, w in zip(self.names, self.weights, strict=True)}
        if theirs != ours:
            raise DataError(
                f"the checkpoint was trained on the mixture {theirs}, not {ours}; resume with the run's own sources"
            )
        self.counts = [int(c) for c in state["counts"]]
        for sampler, s in zip(self.samplers, state["sources"], strict=True):
            sampler.load_state_dict(s)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 windows for this rank; advances the shared state."""
        picks, self.counts = assign(self.weights, self.counts, batch_size * self.world_size)
        wanted = [picks.count(i) for i in range(len(self.samplers))]
        drawn = [iter(s._next_windows(k)) for s, k in zip(self.samplers, wanted, strict=True)]
        windows = [(i, *next(drawn[i])) for i in picks]
        mine = windows[self.rank * batch_size : (self.rank + 1) * batch_size]
        shards = [s.shards for s in self.samplers]
        return np.stack([shards[i][j][s : s + self.T + 1].astype(np.int64) for i, j, s in mine])


def write_mixture(out_root: str | os.PathLike, sources: list[tuple[str, float, str | os.PathLike]]) -> Path:
    """Write the mixture folder of (name, weight, token folder) under OUT_ROOT/<digest[:16]>; return it.

    Every token folder must have been encoded with the same tokenizer. The folder is named after its
    digest (the sources' digests and weights), so writing it again changes nothing.
    """
    weights = normalise([w for _, w, _ in sources])
    parts = [(name, w, TokenData.open(path)) for (name, _, path), w in zip(sources, weights, strict=True)]
    digests = {d.tokenizer_sha256 for _, _, d in parts}
    if len(digests) != 1:
        raise DataError(
            "the sources of a mixture must share one tokenizer; tokenize them with the same model"
        )
    first = parts[0][2]
    entries = [
        {"name": name, "weight": w, "digest": d.manifest.get("digest"), "abs": str(d.root.resolve())}
        for name, w, d in parts
    ]
    digest = sha256_json({"sources": [{k: e[k] for k in ("name", "weight", "digest")} for e in entries]})
    out = Path(out_root) / digest[:16]
    out.mkdir(parents=True, exist_ok=True)
    for e in entries:
        e["path"] = os.path.relpath(e.pop("abs"), out)
    with atomic_path(out / TOKENIZER) as tmp:
        shutil.copyfile(first.tokenizer_path, tmp)
    splits = {
        name: {
            k: sum(int(d.manifest["splits"][name].get(k, 0)) for _, _, d in parts)
            for k in ("tokens", "bytes", "docs")
        }
        for name in first.manifest["splits"]
    }
    atomic_write_json(
        out / MANIFEST,
        {
            "format": MIX_FORMAT,
            "source_format": FORMAT,
            "stage": "mixture",
            "digest": digest,
            "sources": entries,
            "tokenizer": TOKENIZER,
            "tokenizer_sha256": first.tokenizer_sha256,
            "vocab_size": first.vocab_size,
            "eos_id": first.eos_id,
            "splits": splits,
        },
    )
    return out


__all__ = ["MixtureSampler", "assign", "normalise", "write_mixture"]
