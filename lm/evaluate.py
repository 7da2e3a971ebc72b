"""Evaluation of a text: loss per token, perplexity and bits per byte.

The text is tokenized, preceded by EOS (the document boundary the model saw in training, so the
first real token is predicted from a "start of document" context), and cut into windows of at most
seq_len + 1 tokens that overlap by one. Every token of the text is predicted exactly once.

    loss       = total nats / tokens            (mean of -ln p(w(t+1)))
    perplexity = exp(loss)
    bits/byte  = total nats / ln 2 / UTF-8 bytes of the text
Bits per byte does not depend on the tokenizer, so models with different vocabularies compare.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lm.runtime import autocast


@dataclass(frozen=True)
class EvalResult:
    loss: float  # nats per token
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    total_nats: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def token_nats(
    model: torch.nn.Module,
    sequences: list[list[int]],
    seq_len: int,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, int]:
    """Sum of -ln p over seq[1:] given its prefix, for every sequence, and the count of tokens.

    Each sequence is cut into windows of seq_len + 1 tokens overlapping by one; windows of all the
    sequences are batched together (sorted by length, so little is padding).
    """
    device = next(model.parameters()).device
    model.eval()
    windows = [seq[s : s + seq_len + 1] for seq in sequences for s in range(0, max(1, len(seq) - 1), seq_len)]
    windows = sorted((w for w in windows if len(w) > 1), key=len)
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(len(w) for w in chunk)
        x = torch.zeros(len(chunk), width - 1, dtype=torch.long)
        y = torch.full((len(chunk), width - 1), -1, dtype=torch.long)  # -1: padding, ignored
        for j, w in enumerate(chunk):
            t = torch.tensor(w)
            x[j, : len(w) - 1], y[j, : len(w) - 1] = t[:-1], t[1:]
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits, _ = model(x)
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum"
        )
        total += nll.item()
        count += int((y >= 0).sum())
    return total, count


def evaluate_text(
    model, tokenizer, text: str, seq_len: int, batch_size: int = 16, dtype: torch.dtype = torch.float32
) -> EvalResult:
    if not text:
        raise ValueError("the text to evaluate is empty")
    ids = [tokenizer.eos_id, *tokenizer.encode(text)]
    total, count = token_nats(model, [ids], seq_len, batch_size, dtype)
    n_bytes = len(text.encode("utf-8"))
    loss = total / count
    return EvalResult(loss, math.exp(min(loss, 50.0)), total / math.log(2) / n_bytes, count, n_bytes, total)
