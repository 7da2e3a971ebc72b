"""An LSTM language model with the transformer's interface: the sequential baseline.

The background text contrasts the recurrent network, which must walk the positions one after the
other (h(t) needs h(t-1)), with the transformer, which computes every position of a sequence at once.
Training both through the same loop on the same shards lets `forja bench train` show that difference
as step time against context length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lm.config import ModelConfig
from lm.model import RMSNorm, lm_loss


@dataclass
class LSTMState:
    """Hidden and cell state carried between decoding calls (the RNN's whole memory)."""

    h: torch.Tensor | None = None
    c: torch.Tensor | None = None
    pos: int = 0

    def reset(self) -> None:
        self.h = self.c = None
        self.pos = 0

    @property
    def capacity(self) -> float:
        return float("inf")  # an RNN has no context window to overflow


class LSTMModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "resolve vocab_size from the tokenizer before building the model"
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.lstm = nn.LSTM(
            cfg.d_model,
            cfg.d_model,
            num_layers=cfg.n_layer,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        with torch.no_grad():
            nn.init.normal_(self.embed_tokens.weight, std=cfg.init_std)
            if not cfg.tie_embeddings:
                nn.init.normal_(self.lm_head.weight, std=cfg.init_std)

    def forward(self, idx, targets=None, cache: LSTMState | None = None, last_only: bool = False):
        x = self.embed_tokens(idx)
        state = None if cache is None or cache.h is None else (cache.h, cache.c)
        x, (h, c) = self.lstm(x, state)
        if cache is not None:
            cache.h, cache.c = h, c
            cache.pos += idx.shape[1]
        x = self.norm(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        return logits, (None if targets is None else lm_loss(logits, targets))

    def make_cache(self, batch: int) -> LSTMState:
        return LSTMState()

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding and not self.cfg.tie_embeddings:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """6 x the parameters of the recurrent and output matmuls (no attention term)."""
        n = sum(p.numel() for p in self.lstm.parameters() if p.dim() == 2) + self.lm_head.weight.numel()
        return 6.0 * n
