"""Token shards on disk and the (x, y) windows that training reads from them.

Shard file (`*.bin`): a 64-byte little-endian header, then the tokens.

    offset  size  field
    0       8     magic b"FORJATOK"
    8       4     format version (1)
    12      4     bytes per token: 2 (uint16, when the vocabulary fits) or 4 (uint32)
    16      8     number of tokens
    24      8     number of documents (each one ends with EOS)
    32      32    reserved, zero

Token folder (what `tasks.tokenize` writes and `forja train --data` reads):

    manifest.json      format, tokenizer digest, per split: shards, token, byte and document counts
    tokenizer.model    the SentencePiece model
    train-00000.bin …  val-00000.bin …

A training batch is (x, y) with y = x shifted by one: window w of T+1 tokens gives x = w[:-1] and
y = w[1:], so position t of x (the gold prefix up to t) is trained to predict token t+1.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lm.errors import DataError
from lm.fileio import atomic_path, read_json

MAGIC = b"FORJATOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ32x")
HEADER_SIZE = HEADER.size  # 64
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
FORMAT = "forja-tokens"
MIX_FORMAT = "forja-mixture"  # a folder naming several token folders and their weights (lm/mixture.py)


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    if vocab_size > 2**32:  # uint32 would wrap the larger ids silently
        raise DataError(f"vocab_size {vocab_size} is too large: token shards hold ids below 2**32")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, n_docs: int, vocab_size: int) -> None:
    """Write one shard atomically (temp file, then rename)."""
    dtype = dtype_for_vocab(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):  # floats would be truncated
        raise DataError(f"{path}: token ids must be integers; got an array of {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise DataError(
            f"{path}: token ids must lie in [0, {vocab_size}); got {tokens.min()}..{tokens.max()}"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size, n_docs))
        f.write(tokens.astype(dtype.newbyteorder("<"), copy=False).tobytes())


@dataclass(frozen=True)
class ShardHeader:
    version: int
    itemsize: int
    n_tokens: int
    n_docs: int


def read_header(path: str | os.PathLike) -> ShardHeader:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError as e:
        raise DataError(f"cannot read token shard {path}: {e}") from e
    if len(raw) < HEADER_SIZE:
        raise DataError(f"{path} is too short ({len(raw)} bytes) to be a token shard; re-run tokenize")
    magic, version, itemsize, n_tokens, n_docs = HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path} is not a Forja token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise DataError(f"{path} has shard format version {version}; this Forja reads version {VERSION}")
    if itemsize not in (2, 4):
        raise DataError(f"{path} declares {itemsize} bytes per token; expected 2 or 4")
    expected = HEADER_SIZE + n_tokens * itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(
            f"{path} holds {actual} bytes but its header promises {expected} "
            f"({n_tokens} tokens): the file is truncated or corrupted; re-run tokenize"
        )
    return ShardHeader(version, itemsize, n_tokens, n_docs)


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a shard's tokens (read-only, no copy) after checking its header."""
    h = read_header(path)
    dtype = np.dtype(np.uint16 if h.itemsize == 2 else np.uint32).newbyteorder("<")
    if h.n_tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(h.n_tokens,))


@dataclass
class TokenSplit:
    name: str
    shards: list[np.ndarray]
    n_tokens: int
    n_bytes: int  # UTF-8 bytes of the text behind these tokens (for bits per byte)


@dataclass
class MixSource:
    """One source of a mixture: its name, its weight (the shares sum to 1) and its token folder."""

    name: str
    weight: float
    data: TokenData


@dataclass
class TokenData:
    """A token folder: its manifest, its splits and the tokenizer it was made with.

    A mixture folder opens as one too: its splits are the sources' splits together, and `sources`
    lists each source with its weight (empty for a plain token folder).
    """

    root: Path
    manifest: dict[str, Any]
    splits: dict[str, TokenSplit]
    sources: list[MixSource] = field(default_factory=list)

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest.get("tokenizer", TOKENIZER)

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer_sha256"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    @classmethod
    def open(cls, root: str | os.PathLike) -> TokenData:
        root = Path(root)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise DataError(
                f"{root} is not a token folder: {mpath} is missing "
                "(make one with `forja tokenize CLEAN_DIR --out DIR`)"
            )
        manifest = read_json(mpath)
        if manifest.get("format") == MIX_FORMAT:
            return cls._open_mixture(root, manifest)
        if manifest.get("format") != FORMAT:
            raise DataError(f"{mpath}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
        for key in ("tokenizer_sha256", "vocab_size", "eos_id", "splits"):
            if key not in manifest:
                raise DataError(f"{mpath} lacks the field {key!r}; re-run tokenize")
        splits = {}
        for name, info in manifest["splits"].items():
            shards = []
            for s in info["shards"]:
                arr = read_shard(root / s["path"])
                if arr.size != s["tokens"]:
                    raise DataError(f"{root / s['path']}: {arr.size} tokens, manifest says {s['tokens']}")
                shards.append(arr)
            splits[name] = TokenSplit(name, shards, int(info["tokens"]), int(info["bytes"]))
        if "train" not in splits or splits["train"].n_tokens == 0:
            raise DataError(f"{root} has no training tokens")
        return cls(root, manifest, splits)

    @classmethod
    def _open_mixture(cls, root: Path, manifest: dict[str, Any]) -> TokenData:
        sources = [
            MixSource(s["name"], float(s["weight"]), cls.open(root / s["path"])) for s in manifest["sources"]
        ]
        for s in sources:
            if s.data.tokenizer_sha256 != manifest["tokenizer_sha256"]:
                raise DataError(
                    f"{s.data.root} (source {s.name} of the mixture {root}) was tokenized with another "
                    "tokenizer; re-run the pipeline"
                )
        splits = {
            name: TokenSplit(
                name,
                [shard for s in sources for shard in s.data.splits[name].shards],
                sum(s.data.splits[name].n_tokens for s in sources),
                sum(s.data.splits[name].n_bytes for s in sources),
            )
            for name in sources[0].data.splits
        }
        return cls(root, manifest, splits, sources)


class WindowSampler:
    """Deterministic random (x, y) windows over the shards of one split.

    Each epoch cuts every shard into consecutive windows of seq_len + 1 tokens (a window's last
    token is the next window's first), starting at a random shift, and visits all windows in a
    random order. Both come from (seed, epoch), so the sampler's whole state is (epoch, cursor):
    it goes into the checkpoint and a resumed run reads exactly the batches it would have read.

    Under data parallelism every rank holds the same state and draws the same global batch of
    `batch_size * world_size` windows; rank r takes the r-th slice, so ranks read disjoint windows and
    the union is what a single process with the whole global batch would read.
    """

    def __init__(self, shards: list[np.ndarray], seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        self.shards, self.T, self.seed = shards, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0
        lengths = [len(s) for s in shards]
        if max(lengths, default=0) < seq_len + 1:
            raise DataError(
                f"no shard holds seq_len + 1 = {seq_len + 1} tokens (largest: {max(lengths, default=0)}); "
                "lower seq_len or add data"
            )
        self._plan_epoch()

    def _plan_epoch(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        shift = int(rng.integers(0, self.T))
        starts, owners = [], []
        for i, s in enumerate(self.shards):
            off = shift if len(s) - shift >= self.T + 1 else 0
            n = (len(s) - off - 1) // self.T
            starts.append(off + self.T * np.arange(n, dtype=np.int64))
            owners.append(np.full(n, i, dtype=np.int32))
        order = rng.permutation(sum(len(x) for x in starts))
        self._starts = np.concatenate(starts)[order]
        self._owners = np.concatenate(owners)[order]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "seq_len": self.T}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["seq_len"] != self.T:
            raise DataError(
                f"sampler state is for seed={state['seed']} seq_len={state['seq_len']}, "
                f"not seed={self.seed} seq_len={self.T}; resume with the run's own config"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._plan_epoch()

    def _next_windows(self, n: int) -> list[tuple[int, int]]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self._starts):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._plan_epoch()
            take = min(n - len(out), len(self._starts) - self.cursor)
            sl = slice(self.cursor, self.cursor + take)
            out.extend(zip(self._owners[sl].tolist(), self._starts[sl].tolist(), strict=True))
            self.cursor += take
        return out

    def next_batch(self, batch_size: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 windows for this rank; advances the shared state."""
        windows = self._next_windows(batch_size * self.world_size)
        mine = windows[self.rank * batch_size : (self.rank + 1) * batch_size]
        return np.stack([self.shards[i][s : s + self.T + 1].astype(np.int64) for i, s in mine])


def sequential_windows(shards: list[np.ndarray], seq_len: int) -> list[tuple[int, int]]:
    """Every non-overlapping window of a split in order (for validation): (shard, start) pairs."""
    return [(i, start) for i, s in enumerate(shards) for start in range(0, len(s) - seq_len, seq_len)]


def window_batch(shards: list[np.ndarray], windows: list[tuple[int, int]], seq_len: int) -> np.ndarray:
    return np.stack([shards[i][s : s + seq_len + 1].astype(np.int64) for i, s in windows])
