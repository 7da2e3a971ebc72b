"""Evaluation stage: the fixed evaluation set, and the figures a trained model is judged by.

The fixed evaluation set of a dataset is frozen the first time the dataset is tokenized: the
documents of the validation split (which are chosen by a hash of their id, so a document never
moves to training when data arrives), decoded back to text, up to `max_bytes`. Every later model
of the dataset, whatever its tokenizer, is scored on exactly these texts, in bits per byte, so the
champion decision compares like with like.

    EVAL_DIR/eval.jsonl     {"text": ...} per document
    EVAL_DIR/manifest.json  stage "eval-set", documents, bytes, digest (sha256 of eval.jsonl)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lm import downstream
from lm.checkpoint import load_for_inference
from lm.data import TokenData
from lm.evaluate import METHOD as EVAL_METHOD
from lm.evaluate import token_nats
from lm.fileio import atomic_path, file_lock, sha256_file
from lm.generate import generate
from lm.tokenizer import Tokenizer
from tasks.common import StageError, make_manifest, read_manifest, write_manifest

log = logging.getLogger("forja.evaluate")

STAGE = "eval-set"
EVAL_FILE = "eval.jsonl"


# The figures a champion can be chosen by (`register.metric`), and which way is better.
METRIC_DIRECTIONS: dict[str, str] = {"eval_bpb": "lower", "eval_loss": "lower", "eval_perplexity": "lower"}
METRIC_DIRECTIONS |= {
    f"downstream/{task}/{figure}": "higher"
    for task in downstream.TASKS
    for figure in ("acc", "acc_norm", "acc_ci95_low", "acc_norm_ci95_low")
}


class EvalConfig(BaseModel):
    """How models are evaluated and sampled after training."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        200_000, ge=1_000, description="Size cap of the frozen evaluation set (UTF-8 bytes)."
    )
    eval_text: Path | None = Field(
        None,
        description="A text file to use as the evaluation set instead of the frozen validation documents.",
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["The ", "def ", "ROMEO:"],
        description="Prompts for the logged sample generations.",
    )
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Tokens generated per sample.")
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature of the samples (0: greedy).")
    top_k: int | None = Field(50, ge=1, description="Top-k filter of the samples (None: off).")
    seed: int = Field(0, ge=0, description="Seed of the sample generations.")
    downstream_items: int = Field(
        200,
        ge=0,
        le=100_000,
        description="Items per downstream multiple-choice task (0: no downstream tasks).",
    )
    downstream_seed: int = Field(
        0, ge=0, description="Seed that builds the downstream tasks from the evaluation set."
    )


def segments(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """The runs of tokens between EOS separators (each document or document piece)."""
    ends = np.flatnonzero(tokens == eos_id)
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.array([], dtype=np.int64)
    return [tokens[s:e] for s, e in zip(starts, ends, strict=True) if e > s]


def freeze_eval_set(
    tokens_dir: str | os.PathLike,
    eval_dir: str | os.PathLike,
    config: EvalConfig,
    origin: Callable[[list[str]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the fixed evaluation set once; later calls return the existing one untouched.
    `origin(texts)`: what the manifest records as `frozen_from` (flows/eval_set.py)."""
    eval_dir = Path(eval_dir)
    with file_lock(eval_dir / ".lock"):  # two runs freezing at once: the first one wins
        if (eval_dir / "manifest.json").is_file():
            return read_manifest(eval_dir, STAGE)
        return _freeze(tokens_dir, eval_dir, config, origin)


def _freeze(
    tokens_dir: str | os.PathLike, eval_dir: Path, config: EvalConfig, origin: Callable | None = None
) -> dict[str, Any]:
    if config.eval_text is not None:
        if not Path(config.eval_text).is_file():
            raise StageError(
                f"eval_text {config.eval_text} is not a file; give a UTF-8 text file or leave it empty"
            )
        texts = [Path(config.eval_text).read_text(encoding="utf-8")]
        source = str(config.eval_text)
    else:
        data = TokenData.open(tokens_dir)
        val = data.splits.get("val")
        if val is None or val.n_tokens == 0:
            raise StageError(
                f"{tokens_dir} has no validation split to freeze an evaluation set from; raise val_fraction"
            )
        tok = Tokenizer(data.tokenizer_path)
        texts = []
        # a mixture: each source's validation text in proportion to its weight
        for shards, budget in [
            (s.data.splits["val"].shards, config.max_bytes * s.weight) for s in data.sources
        ] or [(val.shards, config.max_bytes)]:
            total, first = 0, len(texts)
            for shard in shards:
                for seg in segments(np.asarray(shard), data.eos_id):
                    text = tok.decode(seg.tolist())
                    if total + len(text.encode()) > budget and len(texts) > first:
                        break
                    texts.append(text)
                    total += len(text.encode())
        source = f"validation split of {tokens_dir}"
    with atomic_path(eval_dir / EVAL_FILE) as tmp:
        tmp.write_text(
            "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
        )
    digest = sha256_file(eval_dir / EVAL_FILE)
    out = {
        "path": EVAL_FILE,
        "sha256": digest,
        "rows": len(texts),
        "bytes": (eval_dir / EVAL_FILE).stat().st_size,
    }
    counts = {"documents": len(texts), "text_bytes": sum(len(t.encode()) for t in texts)}
    extra = {"frozen_from": origin(texts)} if origin else {}  # not in the digest: the texts are
    manifest = make_manifest(STAGE, {"max_bytes": config.max_bytes, "origin": source}, [out], counts, **extra)
    log.info(
        "froze the evaluation set: %d documents, %d bytes, from %s", len(texts), counts["text_bytes"], source
    )
    return write_manifest(eval_dir, manifest)


def load_eval_texts(eval_dir: str | os.PathLike) -> tuple[list[str], str]:
    m = read_manifest(eval_dir, STAGE)
    lines = (Path(eval_dir) / EVAL_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()], m["digest"]


def evaluate_checkpoint(checkpoint: str | os.PathLike, eval_dir: str | os.PathLike) -> dict[str, Any]:
    """Loss per token, perplexity and bits per byte of a model over every document of the eval set.

    Each document is scored from a start-of-document context (EOS), as `forja eval` scores a file.
    """
    loaded = load_for_inference(checkpoint)
    tok = Tokenizer(loaded.tokenizer_path)
    texts, digest = load_eval_texts(eval_dir)
    seqs = [[tok.eos_id, *ids] for ids in tok.encode_batch(texts)]
    total, count = token_nats(loaded.model, seqs, loaded.model_cfg.max_seq_len)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = total / max(count, 1)
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50.0)),
        "eval_bpb": total / math.log(2) / max(n_bytes, 1),
        "eval_tokens": count,
        "eval_bytes": n_bytes,
        "eval_set_digest": digest,
        "eval_method": EVAL_METHOD,
    }


def downstream_method(config: EvalConfig) -> str:
    """What makes downstream figures comparable: the task builder's version, its seed and size."""
    return f"{downstream.METHOD}-seed{config.downstream_seed}-items{config.downstream_items}"


def evaluate_downstream(
    checkpoint: str | os.PathLike, eval_dir: str | os.PathLike, config: EvalConfig
) -> dict[str, Any]:
    """The downstream tasks built from the evaluation set (lm/downstream.py): accuracy (acc,
    acc_norm) with 95% Wilson intervals and the chance level, as `downstream/<task>/<figure>`.

    A model whose context cannot hold a choice gets no figures (a warning says why)."""
    if config.downstream_items == 0:
        return {}
    loaded = load_for_inference(checkpoint)
    texts, _ = load_eval_texts(eval_dir)
    try:
        figures = downstream.evaluate_downstream(
            loaded.model,
            Tokenizer(loaded.tokenizer_path),
            texts,
            loaded.model_cfg.max_seq_len,
            config.downstream_seed,
            config.downstream_items,
        )
    except downstream.DoesNotFit as e:
        log.warning("no downstream figures for %s: %s", checkpoint, e)
        return {}
    return {**figures, "downstream_method": downstream_method(config)}


def downstream_markdown_rows(metrics: dict[str, Any]) -> str:
    """A markdown table row per downstream task of `metrics`: acc_norm, its 95% interval, chance."""
    rows = ""
    for task in downstream.TASKS:
        p = f"downstream/{task}"
        if f"{p}/acc_norm" in metrics:
            rows += (
                f"\n| {task}: acc_norm [95% CI] (chance {metrics[f'{p}/chance']:.2f}) "
                f"| {metrics[f'{p}/acc_norm']:.3f} "
                f"[{metrics[f'{p}/acc_norm_ci95_low']:.3f}, {metrics[f'{p}/acc_norm_ci95_high']:.3f}] |"
            )
    return rows


def sample_texts(checkpoint: str | os.PathLike, config: EvalConfig) -> list[dict[str, str]]:
    loaded = load_for_inference(checkpoint)
    tok = Tokenizer(loaded.tokenizer_path)
    out = []
    for i, prompt in enumerate(config.prompts):
        ids = tok.encode(prompt)
        new = generate(
            loaded.model,
            ids,
            config.max_new_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            seed=config.seed + i,
            eos_id=tok.eos_id,
        )
        out.append({"prompt": prompt, "text": tok.decode(ids + [t for t in new if t != tok.eos_id])})
    return out
