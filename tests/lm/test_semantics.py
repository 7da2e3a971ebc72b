"""The math of self-supervised next-token prediction, pinned down."""

import math

import pytest
import torch
import torch.nn.functional as F

from lm.config import ModelConfig
from lm.model import Transformer, lm_loss
from lm.models import build_model

VOCAB = 97


def model_for(arch="transformer", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=VOCAB, n_layer=2, n_head=4, d_model=64, max_seq_len=32, **kw)
    return build_model(cfg).eval()


@pytest.mark.parametrize(("p", "expected"), [(0.70, 0.357), (0.97, 0.030)])
def test_background_text_numbers(p, expected):
    # The background text: if the model gives the gold next word ("queijo") probability p,
    # the loss at that position is -ln p.
    logits = torch.log(torch.tensor([[[p, 1.0 - p]]]))
    loss = lm_loss(logits, torch.tensor([[0]]))
    assert round(loss.item(), 3) == expected


def test_loss_is_mean_of_minus_log_softmax_at_gold_next_tokens():
    model = model_for()
    idx = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]  # teacher forcing: gold prefix in, next token as target
    logits, loss = model(x, y)
    by_hand = []
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            row = logits[b, t].double()
            log_z = math.log(sum(math.exp(v) for v in row.tolist()))
            by_hand.append(-(row[y[b, t]].item() - log_z))
    assert loss.item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    assert len(by_hand) == 3 * 16  # every position of every sequence counts


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_causality_future_tokens_never_change_past_logits(arch):
    model = model_for(arch)
    idx = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    base, _ = model(idx)
    for t in (0, 5, 11, 22):
        changed = idx.clone()
        changed[0, t + 1 :] = (changed[0, t + 1 :] + 1 + torch.arange(23 - t)) % VOCAB
        out, _ = model(changed)
        assert torch.equal(out[0, : t + 1], base[0, : t + 1]), f"position <= {t} saw the future"
        assert not torch.allclose(out[0, t + 1 :], base[0, t + 1 :])  # the change did reach later positions


def test_untrained_loss_is_about_ln_vocab():
    model = model_for()
    idx = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(3))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(VOCAB)) < 0.05


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_two_layer_model_overfits_one_batch(arch):
    torch.manual_seed(0)
    model = model_for(arch).train()
    idx = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"{arch} did not memorise one batch: loss {loss.item():.3f}"


@pytest.mark.parametrize(
    "kw", [{}, {"n_kv_head": 2}, {"qk_norm": True}, {"mlp": "relu2"}, {"tie_embeddings": True}]
)
def test_kv_cache_decoding_matches_full_forward(kw):
    model = model_for(**kw)
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    full, _ = model(idx)
    cache = model.make_cache(2)
    prefill, _ = model(idx[:, :8], cache=cache)  # a prompt, then one token at a time
    steps = [prefill] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(8, 14)]
    chunk, _ = model(idx[:, 14:], cache=cache)  # and a chunk on top of a filled cache
    incremental = torch.cat([*steps, chunk], dim=1)
    torch.testing.assert_close(incremental, full, rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_equals_repeated_kv_heads():
    """GQA with k/v heads shared by groups of q heads is plain attention with the k/v heads repeated."""
    torch.manual_seed(0)
    gqa = model_for(n_kv_head=2)
    mha = model_for()
    mha.load_state_dict(
        {k: v for k, v in gqa.state_dict().items() if "k_proj" not in k and "v_proj" not in k}, strict=False
    )
    for g_layer, m_layer in zip(gqa.layers, mha.layers, strict=True):
        for name in ("k_proj", "v_proj"):
            w = getattr(g_layer.self_attn, name).weight.view(2, 16, 64)  # (kv heads, head dim, d_model)
            getattr(m_layer.self_attn, name).weight.data.copy_(w.repeat_interleave(2, dim=0).reshape(64, 64))
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], rtol=1e-5, atol=1e-5)


def test_attention_matches_explicit_softmax_formula():
    """SDPA with is_causal equals softmax(q k^T / sqrt(d) + causal mask) v written out."""
    model = model_for()
    attn = model.layers[0].self_attn
    x = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(7))
    cos, sin = model.rope_cos[:10], model.rope_sin[:10]
    from lm.model import apply_rope

    q = apply_rope(attn.q_proj(x).view(1, 10, 4, 16).transpose(1, 2), cos, sin)
    k = apply_rope(attn.k_proj(x).view(1, 10, 4, 16).transpose(1, 2), cos, sin)
    v = attn.v_proj(x).view(1, 10, 4, 16).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / 4.0 + torch.full((10, 10), float("-inf")).triu(1)
    y = F.softmax(scores, -1) @ v
    expected = attn.o_proj(y.transpose(1, 2).reshape(1, 10, 64))
    torch.testing.assert_close(attn(x, cos, sin), expected, rtol=1e-5, atol=1e-5)


def test_parameter_count_and_flops_per_token():
    cfg = ModelConfig(vocab_size=1000, n_layer=2, n_head=4, d_model=64, max_seq_len=32)
    model = Transformer(cfg)
    hidden = cfg.hidden_dim  # 2/3 * 4 * 64 = 170 -> 192
    assert hidden == 192
    per_layer = 4 * 64 * 64 + 3 * 64 * hidden + 2 * 64
    expected = 1000 * 64 * 2 + 2 * per_layer + 64
    assert model.num_params() == expected
    matmul = 2 * (4 * 64 * 64 + 3 * 64 * hidden) + 1000 * 64
    assert model.flops_per_token(32) == 6 * matmul + 12 * 2 * 64 * 32
    tied = Transformer(ModelConfig(vocab_size=1000, n_layer=2, n_head=4, d_model=64, tie_embeddings=True))
    assert tied.num_params() == expected - 1000 * 64
