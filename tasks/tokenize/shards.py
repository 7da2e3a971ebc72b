"""Step 3: the parts' token files re-cut into equal-sized shards per split, and the manifest,
written last."""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lm.data import FORMAT, TOKENIZER, dtype_for_vocab, write_shard
from lm.errors import DataError
from lm.fileio import sha256_file
from tasks.common import StageError, make_manifest, output_record, read_manifest
from tasks.tokenize.config import SPLITS, STAGE, UPSTREAM, TokenizeConfig

log = logging.getLogger("forja.tokenize")


def _recut(sources: list[tuple[Path, int]], dtype: np.dtype, sizes: list[int]) -> Iterator[np.ndarray]:
    """The sources' tokens, concatenated in order and re-cut into arrays of the given sizes."""
    for path, n in sources:
        if not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            raise DataError(f"{path} should hold {n} tokens but is missing or has another size; re-run")
    pending = iter(sizes)
    if (want := next(pending, None)) is None:
        return
    buf, filled = np.empty(want, dtype=dtype), 0
    for path, _ in sources:
        with open(path, "rb") as f:
            while True:
                got = np.fromfile(f, dtype=dtype, count=want - filled)
                buf[filled : filled + got.size] = got
                filled += got.size
                if filled < want:
                    break  # this file is exhausted: go on with the next one
                yield buf
                if (want := next(pending, None)) is None:
                    return
                buf, filled = np.empty(want, dtype=dtype), 0


def _write_split(
    split: str, sources: list[tuple[Path, int]], out: Path, vocab_size: int, eos: int, shard_tokens: int
) -> list[dict[str, Any]]:
    """Equal-sized shards of at most `shard_tokens` tokens; memory is one shard."""
    total = sum(n for _, n in sources)
    n_shards = math.ceil(total / shard_tokens)
    bounds = [round(i * total / n_shards) for i in range(n_shards + 1)] if n_shards else [0]
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    dtype = dtype_for_vocab(vocab_size).newbyteorder("<")
    shards = []
    for i, tokens in enumerate(_recut(sources, dtype, sizes)):
        path = out / f"{split}-{i:05d}.bin"
        write_shard(path, tokens, int(np.count_nonzero(tokens == eos)), vocab_size)
        shards.append({**output_record(path, out), "tokens": int(tokens.size)})
    if len(shards) != n_shards:
        raise DataError(f"the {split} token files hold fewer tokens than their records say; re-run")
    return shards


def finalize(
    in_dir: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: dict[str, Any],
    parts: list[dict[str, Any]],
    config: TokenizeConfig,
) -> dict[str, Any]:
    """Cut the parts' token files into OUT/<split>-NNNNN.bin shards; return the manifest (the stage
    runner adds the key and writes it last).

    `tokenizer` is what train_tokenizer / reuse_tokenizer returned (its model must be OUT/tokenizer.model),
    `parts` what encode_part returned, in part order. Returns the manifest.
    """
    in_dir, out = Path(in_dir), Path(out)
    upstream = read_manifest(in_dir, UPSTREAM)["digest"]
    model = out / TOKENIZER
    if not model.is_file() or sha256_file(model) != tokenizer["sha256"]:
        raise StageError(f"{model} is missing or is not the tokenizer the parts were encoded with; re-run")
    dtype = dtype_for_vocab(tokenizer["vocab_size"]).newbyteorder("<")
    for p in parts:
        if p["dtype"] != dtype.str:
            raise StageError(f"part {p['part']} was encoded with another tokenizer; re-run encode_part")
    outputs = [output_record(model, out)]
    splits: dict[str, Any] = {}
    for split in SPLITS:
        infos = [p["splits"][split] for p in parts]
        shards = _write_split(
            split,
            [(Path(i["path"]), i["tokens"]) for i in infos],
            out,
            tokenizer["vocab_size"],
            tokenizer["eos_id"],
            config.shard_tokens,
        )
        outputs += shards
        splits[split] = {
            "tokens": sum(i["tokens"] for i in infos),
            "bytes": sum(i["bytes"] for i in infos),
            "docs": sum(i["docs"] for i in infos),
            "segments": sum(i["segments"] for i in infos),
            "shards": [{"path": s["path"], "tokens": s["tokens"], "sha256": s["sha256"]} for s in shards],
        }
    if splits["train"]["tokens"] == 0:
        raise StageError(
            f"{in_dir}: no text landed in the train split (val_fraction={config.val_fraction}); "
            "lower val_fraction or add documents"
        )
    if config.val_fraction > 0 and splits["val"]["tokens"] == 0:
        log.warning(
            "the val split is empty: too few chunks for val_fraction=%s; lower chunk_bytes or add documents",
            config.val_fraction,
        )
    skipped: Counter = Counter()
    for p in parts:
        skipped.update(p["skipped"])
    counts = {
        "docs": sum(p["docs"] for p in parts),
        "docs_skipped": dict(sorted(skipped.items())),
        "chunks": sum(p["chunks"] for p in parts),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "bytes": sum(s["bytes"] for s in splits.values()),
        "sample_bytes": tokenizer["sample_bytes"],
        "sample_lines": tokenizer["sample_lines"],
        "long_lines": tokenizer["long_lines"],
    }
    manifest = make_manifest(
        STAGE,
        config,
        outputs,
        counts,
        upstream=upstream,
        format=FORMAT,
        tokenizer=TOKENIZER,
        tokenizer_sha256=tokenizer["sha256"],
        tokenizer_source={"trained": tokenizer["trained"], "path": tokenizer["source"]},
        vocab_size=tokenizer["vocab_size"],
        eos_id=tokenizer["eos_id"],
        splits=splits,
    )
    return manifest  # the stage runner adds the key and writes it last
