"""Sampling text from a model: KV cache (or LSTM state), temperature, top-k, top-p, seed, EOS stop."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Mask (to -inf) every token outside the top k and outside the smallest set of mass >= top_p."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep a token if the mass before it is < top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of (B, V) logits; temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
) -> list[int]:
    """Continue `prompt` (token ids) by up to `max_new_tokens`; stops after EOS. Returns the new ids.

    The prompt is processed once; each new token then costs one position (the cache holds the keys
    and values of the past). When the transformer's context fills up, the cache is rebuilt from the
    most recent half context, a sliding window.
    """
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else torch.seed())
    context = list(prompt) or ([eos_id] if eos_id is not None else [0])
    limit = getattr(model.cfg, "max_seq_len", None) if model.cfg.arch == "transformer" else None
    cache = model.make_cache(1)
    feed = context[-limit:] if limit else context
    out: list[int] = []
    for _ in range(max_new_tokens):
        if limit and cache.pos + len(feed) > limit:  # slide: re-read the last half context
            cache.reset()
            feed = (context + out)[-(limit // 2) :]
        logits, _ = model(torch.tensor([feed], device=device), cache=cache, last_only=True)
        token = int(sample_next(logits[:, -1], temperature, top_k, top_p, gen))
        out.append(token)
        if eos_id is not None and token == eos_id:
            break
        feed = [token]
    return out
