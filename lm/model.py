"""Forja's decoder-only transformer, in one file.

A causal language model: given tokens w1..wt it outputs a distribution over w(t+1) at every position
at once (teacher forcing during training: the gold prefix, never the model's own output, is the
input). Design choices, each a field of `ModelConfig`:

- Token embedding and no learned positions: rotary position embeddings (RoPE, Su et al. 2021,
  arXiv:2104.09864) rotate q and k. We use the "rotate half" layout of Hugging Face's Llama, so the
  weights export to `LlamaForCausalLM` without any permutation.
- Pre-norm residual blocks with RMSNorm (Zhang & Sennrich 2019) holding a learnable scale, and a
  final RMSNorm before the output head.
- Causal self-attention through `F.scaled_dot_product_attention(is_causal=True)`, which picks a
  flash / memory-efficient kernel where one exists. Grouped-query attention (Ainslie et al. 2023)
  when `n_kv_head < n_head`; optional QK-norm (RMSNorm of q and k per head, as in OLMo 2 / Qwen3).
- SwiGLU MLP (Shazeer 2020, arXiv:2002.05202), `down(silu(gate(x)) * up(x))`, by default; ReLU²
  (So et al. 2021, "Primer") as a switch.
- No biases anywhere; optional tied input/output embeddings.
- Init: normal(0, init_std) everywhere, with the projections that write into the residual stream
  scaled by 1/sqrt(2 * n_layer) (GPT-2), so the residual's variance does not grow with depth.

With the defaults (swiglu, no qk_norm) a block is exactly a Hugging Face Llama decoder layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lm.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 like Llama's (the scale is then applied in x's dtype)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_len, head_dim) for the rotate-half layout, in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the angles of its positions; cos/sin are (T, D)."""
    d = x.shape[-1] // 2
    rotated = torch.cat((-x[..., d:], x[..., :d]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of past positions for incremental decoding: one (k, v) pair per layer."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    pos: int = 0  # positions filled so far

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, device, dtype) -> KVCache:
        shape = (batch, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim)
        return cls(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
        )

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reset(self) -> None:
        self.pos = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, is_causal = None, True
        if cache is not None:
            start = cache.pos
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]
            if start > 0:  # new queries see every cached position and the causal part of their own
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            enable_gqa=self.n_kv != self.n_head,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.relu(self.up_proj(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin, cache, layer))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    """`forward(idx, targets=None) -> (logits, loss)`; with a `KVCache` it decodes incrementally."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "resolve vocab_size from the tokenizer before building the model"
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            elif p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=std)
            else:  # norm scales
                nn.init.ones_(p)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.shape[1]
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.embed_tokens(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        x = self.norm(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None if targets is None else lm_loss(logits, targets)
        return logits, loss

    def make_cache(self, batch: int) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache.empty(self.cfg, batch, p.device, p.dtype)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if exclude_embedding and not self.cfg.tie_embeddings:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 x (matmul parameters) + 12 x n_layer x d_model x seq_len.

        The first term is the forward (2) and backward (4) multiply-adds of every weight matrix,
        the output head included and the embedding lookup excluded; the second the attention
        scores and weighted sum (PaLM appendix B, as nanoGPT's estimate_mfu).
        """
        c = self.cfg
        t = seq_len or c.max_seq_len
        emb = self.embed_tokens.weight
        n_matmul = sum(p.numel() for p in self.parameters() if p.dim() >= 2 and p is not emb)
        if c.tie_embeddings:  # the shared matrix is also the output head, which is a matmul
            n_matmul += emb.numel()
        return 6.0 * n_matmul + 12.0 * c.n_layer * c.d_model * t


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over every target position of -log p(target): the next-token cross-entropy, in fp32.

    Positions whose target is -1 are ignored (padding); everything else counts equally.
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
