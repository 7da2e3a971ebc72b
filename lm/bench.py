"""`forja bench train`: measured speed of training on this machine, with a reference in the same run.

Figures (all measured here, now):
- dense matmul peak of torch in fp32 and bf16 (the denominators of MFU);
- a plain fp32 GPT in the style of nanoGPT's model.py (LayerNorm with bias, GELU MLP, learned
  positions, no dropout, unfused AdamW) as the reference every speed is compared with;
- Forja's transformer at the `tiny` preset and at 6x384 / context 256 in each precision and mode
  that can help (fp32, bf16 autocast, torch.compile), tokens/s and MFU;
- step time of the transformer and the LSTM baseline at contexts 64, 256 and 1024.
Speed is reported, never asserted: a benchmark prints figures and ratios, tests check behaviour.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lm.config import ModelConfig, TrainConfig, get_preset
from lm.models import build_model
from lm.optim import make_optimizer
from lm.runtime import autocast, cpu_has_native_bf16, matmul_peak_flops


class ReferenceGPT(nn.Module):
    """nanoGPT's GPT (model.py) reduced to what runs: the usual baseline of CPU speed."""

    def __init__(self, vocab: int, n_layer: int, n_head: int, d: int, ctx: int):
        super().__init__()
        self.n_head = n_head
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln_1": nn.LayerNorm(d),
                    "c_attn": nn.Linear(d, 3 * d),
                    "c_proj": nn.Linear(d, d),
                    "ln_2": nn.LayerNorm(d),
                    "c_fc": nn.Linear(d, 4 * d),
                    "mlp_proj": nn.Linear(4 * d, d),
                }
            )
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = b["c_attn"](b["ln_1"](x)).split(x.size(-1), dim=2)
            q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b["c_proj"](y.transpose(1, 2).reshape(B, T, -1))
            x = x + b["mlp_proj"](F.gelu(b["c_fc"](b["ln_2"](x))))
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def train_steps(
    model, opt, xs: list[torch.Tensor], device: torch.device, dtype
) -> tuple[list[float], list[float]]:
    """One optimiser step per batch of (batch, ctx + 1) tokens; (losses, seconds per step), each
    step's time taken after the device finished it."""
    losses, times = [], []
    for x in xs:
        x = x.to(device, non_blocking=True)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def _time_steps(model, opt, batch: int, ctx: int, vocab: int, steps: int, warmup: int, dtype) -> float:
    """Seconds per optimiser step (median of `steps`), after `warmup` steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, ctx + 1), generator=g)
    _, times = train_steps(model, opt, [x] * (warmup + steps), torch.device("cpu"), dtype)
    return sorted(times[warmup:])[steps // 2]


def _forja_case(model_cfg: ModelConfig, batch: int, dtype, compile_: bool, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = build_model(model_cfg)
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    fwd = torch.compile(model) if compile_ else model
    t0 = time.perf_counter()
    step_s = _time_steps(fwd, opt, batch, model_cfg.max_seq_len, model_cfg.vocab_size, steps, warmup, dtype)
    tps = batch * model_cfg.max_seq_len / step_s
    peak = matmul_peak_flops("cpu", dtype)
    return {
        "model": model_cfg.shape,
        "arch": model_cfg.arch,
        "context": model_cfg.max_seq_len,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "compile": compile_,
        "params": model.num_params(),
        "step_s": step_s,
        "tokens_per_s": tps,
        "mfu": model.flops_per_token(model_cfg.max_seq_len) * tps / peak,
        "wall_s": time.perf_counter() - t0,
    }


def run_train_bench(quick: bool = False, vocab: int = 4096) -> dict[str, Any]:
    torch.set_num_threads(torch.get_num_threads())
    steps, warmup = (2, 1) if quick else (6, 2)
    report: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(),
            "torch": torch.__version__,
        }
    }
    peak32 = matmul_peak_flops("cpu", torch.float32)
    peak16 = matmul_peak_flops("cpu", torch.bfloat16, n=512, seconds=0.5)
    report["matmul_peak_gflops"] = {"float32": peak32 / 1e9, "bfloat16": peak16 / 1e9}
    precisions = [torch.float32] + ([torch.bfloat16] if peak16 > peak32 else [])
    if len(precisions) == 1:
        native = report["machine"]["native_bf16"]
        report["notes"] = [
            f"bf16 matmul peak {peak16 / 1e9:.1f} GFLOP/s is below fp32's {peak32 / 1e9:.1f} here (the CPU "
            + (
                "reports native bf16, yet it is slower"
                if native
                else "has no native bf16; dtype=auto keeps fp32"
            )
            + "), so the bf16 training cases are skipped"
        ]

    # Reference: nanoGPT-style fp32 GPT, 6x384, context 256, batch 16 (dropout 0).
    torch.manual_seed(0)
    ref = ReferenceGPT(vocab, 6, 6, 384, 256)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    ref_step = _time_steps(ref, ref_opt, 16, 256, vocab, steps, warmup, torch.float32)
    ref_tps = 16 * 256 / ref_step
    report["reference"] = {"model": "nanogpt-6x384", "context": 256, "batch": 16, "tokens_per_s": ref_tps}

    tiny = get_preset("tiny")
    tiny_cfg = dataclasses.replace(tiny.model, vocab_size=vocab)
    shape_cfg = ModelConfig(vocab_size=vocab, n_layer=6, n_head=6, d_model=384, max_seq_len=256)
    cases = []
    for dtype in precisions:
        for compile_ in (False, True):
            cases.append(_forja_case(tiny_cfg, tiny.train.batch_size, dtype, compile_, steps, warmup))
            cases.append(_forja_case(shape_cfg, 16, dtype, compile_, steps, warmup))
    for c in cases:
        if c["model"] == "6x384":
            c["vs_reference"] = c["tokens_per_s"] / ref_tps
    report["transformer"] = cases

    # Transformer vs LSTM: same width, depth and batch; step time against context length. The LSTM
    # must walk the positions one after the other (h(t) needs h(t-1)); the transformer computes all
    # positions of a sequence in one matmul per layer. Batch 1 shows the difference bare; at batch 8
    # the LSTM's per-step matmuls are 8 rows tall, so the CPU parallelises across the batch instead.
    rows = []
    for batch in (1, 8):
        for ctx in (64, 256, 1024):
            row: dict[str, Any] = {"context": ctx, "batch": batch}
            for arch in ("transformer", "lstm"):
                cfg = ModelConfig(
                    arch=arch, vocab_size=vocab, n_layer=2, n_head=4, d_model=256, max_seq_len=ctx
                )
                r = _forja_case(cfg, batch, torch.float32, False, max(1, steps // 2), 1)
                row[f"{arch}_step_s"] = r["step_s"]
                row[f"{arch}_tokens_per_s"] = r["tokens_per_s"]
            row["lstm_over_transformer"] = row["lstm_step_s"] / row["transformer_step_s"]
            rows.append(row)
    report["transformer_vs_lstm"] = rows
    best = max((c for c in cases if c["model"] == "6x384"), key=lambda c: c["tokens_per_s"])
    report["summary"] = {
        "6x384_best_tokens_per_s": best["tokens_per_s"],
        "6x384_best_setting": f"{best['dtype']}{' compiled' if best['compile'] else ''}",
        "6x384_vs_reference": best["vs_reference"],
        "reference_tokens_per_s": ref_tps,
    }
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"machine: {r['machine']}",
        "matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in r["matmul_peak_gflops"].items()),
        *[f"note: {n}" for n in r.get("notes", [])],
        f"reference fp32 GPT 6x384/256 batch 16: {r['reference']['tokens_per_s']:,.0f} tokens/s",
        "",
        f"{'model':>8} {'ctx':>5} {'batch':>5} {'dtype':>9} {'compile':>7} {'tokens/s':>10} {'mfu':>6} {'vs ref':>7}",
    ]
    for c in r["transformer"]:
        vs = f"{c['vs_reference']:.2f}x" if "vs_reference" in c else ""
        lines.append(
            f"{c['model']:>8} {c['context']:>5} {c['batch']:>5} {c['dtype']:>9} {c['compile']!s:>7} "
            f"{c['tokens_per_s']:>10,.0f} {100 * c['mfu']:>5.1f}% {vs:>7}"
        )
    lines += [
        "",
        f"{'batch':>5} {'context':>7} {'transformer s/step':>18} {'lstm s/step':>12} {'lstm/transformer':>16}",
    ]
    for row in r["transformer_vs_lstm"]:
        lines.append(
            f"{row['batch']:>5} {row['context']:>7} {row['transformer_step_s']:>18.3f} {row['lstm_step_s']:>12.3f} "
            f"{row['lstm_over_transformer']:>15.2f}x"
        )
    return "\n".join(lines)


__all__ = ["ReferenceGPT", "format_report", "run_train_bench"]
