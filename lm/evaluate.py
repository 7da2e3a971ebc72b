"""Evaluation of a text: loss per token, perplexity and bits per byte.

The text is tokenized, preceded by EOS (the document boundary the model saw in training, so the
first real token is predicted from a "start of document" context), and scored in windows of seq_len
predicted tokens. Every token of the text is predicted exactly once, with as much context as the
model allows: a window's input is the seq_len tokens just before its last predicted token, so the
last, partial window also sees a full context of earlier tokens. These are the windows of
lm-evaluation-harness's `loglikelihood_rolling` (context_len=1), so `total_nats` is the negative of
its sum for the same text, model and tokenizer.

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

# How tokens are scored; a figure computed another way is not comparable (the champion gate
# re-scores a champion whose recorded figure carries another method). Bump it when token_nats'
# windows or counting change.
METHOD = "rolling-full-context-1"


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


def rolling_windows(sequences: list[list[int]], seq_len: int) -> list[tuple[list[int], int]]:
    """(window, number of targets scored at its end) pairs covering every target seq[1:] once."""
    out = []
    for seq in sequences:
        n = len(seq) - 1  # targets: seq[1..n]
        for start in range(0, n, seq_len):
            end = min(start + seq_len, n)  # this window scores seq[start+1 .. end]
            out.append((seq[max(0, end - seq_len) : end + 1], end - start))
    return out


@torch.no_grad()
def token_nats(
    model: torch.nn.Module,
    sequences: list[list[int]],
    seq_len: int,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, int]:
    """Sum of -ln p over seq[1:] given its prefix, for every sequence, and the count of tokens.

    Each sequence's targets seq[1:] are scored seq_len at a time; a window's input is the seq_len
    tokens before its last target (the last window included), and only its own targets count.
    Windows of all the sequences are batched together (sorted by length, so little is padding).
    """
    device = next(model.parameters()).device
    model.eval()
    windows = sorted(rolling_windows(sequences, seq_len), key=lambda w: len(w[0]))
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(len(w) for w, _ in chunk)
        x = torch.zeros(len(chunk), width - 1, dtype=torch.long)
        y = torch.full((len(chunk), width - 1), -1, dtype=torch.long)  # -1: padding or context, ignored
        for j, (w, scored) in enumerate(chunk):
            t = torch.tensor(w)
            x[j, : len(w) - 1] = t[:-1]
            y[j, len(w) - 1 - scored : len(w) - 1] = t[len(w) - scored :]
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
        raise ValueError("the text to evaluate is empty: give a file with some text in it")
    ids = [tokenizer.eos_id, *tokenizer.encode(text)]
    total, count = token_nats(model, [ids], seq_len, batch_size, dtype)
    n_bytes = len(text.encode("utf-8"))
    loss = total / count
    return EvalResult(loss, math.exp(min(loss, 50.0)), total / math.log(2) / n_bytes, count, n_bytes, total)
