"""GPU readiness in one run of at most 8 minutes on one CUDA GPU; one JSON summary.

    bash bench/gpu_check.sh [OUT.json]                      # on a machine with one CUDA GPU
    python bench/gpu_check.py --device cpu --smoke          # the same code, tiny, on a CPU

Sections, each timed and recorded (a failing section is recorded with its error; the others run):
  gpu_tests      `pytest -m gpu` (tests/lm/test_gpu.py: bf16 training and resume, generation)
  speed          Forja's transformer at the `small` (6x384, ctx 256) and `gpt2-124m` (12x768,
                 ctx 1024, vocab 50,304) shapes, bf16 autocast + torch.compile: tokens/s, MFU
                 against the device's bf16 peak (measured 8192^3 matmul, and the data-sheet figure
                 when the device is known), peak memory
  bf16_vs_fp32   200 steps of the same model on the same batches (bytes of tinyshakespeare) in fp32
                 and in bf16 autocast: final losses within 2%
  rnn_table      step time of the transformer and the LSTM baseline (2x256, batch 8) against
                 context length: where the transformer's parallel positions pull ahead of the
                 LSTM's sequential steps, and where they do not
  forja_run      `forja run --preset small` end to end on CUDA (a few hundred steps)

--smoke shrinks every size so that the whole script runs on a CPU in a minute or two: what the test
suite runs (tests/test_gpu_check.py), so the GPU run is not its first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lm.bench import train_steps  # noqa: E402
from lm.config import ModelConfig, TrainConfig, get_preset  # noqa: E402
from lm.models import build_model  # noqa: E402
from lm.optim import make_optimizer  # noqa: E402
from lm.runtime import matmul_peak_flops  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s, without sparsity).
DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
NO_CUDA = (
    "bench/gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False); it measures one "
    "NVIDIA GPU. To check the script itself on this CPU: python bench/gpu_check.py --device cpu --smoke"
)


def batches(vocab: int, batch: int, ctx: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """`n` batches of (batch, ctx + 1) tokens: bytes of tinyshakespeare (vocab >= 256), else random."""
    g = torch.Generator().manual_seed(seed)
    if CORPUS.is_file() and vocab >= 256:
        data = torch.frombuffer(bytearray(CORPUS.read_bytes()), dtype=torch.uint8).long()
        starts = torch.randint(0, len(data) - ctx - 1, (n, batch), generator=g)
        return [torch.stack([data[s : s + ctx + 1] for s in row.tolist()]) for row in starts]
    return [torch.randint(0, vocab, (batch, ctx + 1), generator=g) for _ in range(n)]


def speed(
    name: str, cfg: ModelConfig, batch: int, device, dtype, compile_: bool, steps: int, warmup: int
) -> dict:
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg).to(device)
    opt = make_optimizer(model, TrainConfig(), device)
    fwd = torch.compile(model) if compile_ else model
    t0 = time.perf_counter()
    _, times = train_steps(
        fwd, opt, batches(cfg.vocab_size, batch, cfg.max_seq_len, warmup + steps), device, dtype
    )
    step_s = sorted(times[warmup:])[len(times[warmup:]) // 2]
    tps = batch * cfg.max_seq_len / step_s
    flops = model.flops_per_token(cfg.max_seq_len) * tps
    return {
        "shape": name,
        "params": model.num_params(),
        "batch": batch,
        "context": cfg.max_seq_len,
        "dtype": str(dtype).removeprefix("torch."),
        "compile": compile_,
        "first_steps_s": sum(times[:warmup]),  # compilation included
        "step_s": step_s,
        "tokens_per_s": tps,
        "model_flops_per_s": flops,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "wall_s": time.perf_counter() - t0,
    }


def bf16_vs_fp32(device, steps: int, cfg: ModelConfig, batch: int) -> dict:
    xs = batches(cfg.vocab_size, batch, cfg.max_seq_len, steps, seed=1)
    final = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        opt = make_optimizer(model, TrainConfig(lr=1e-3), device)
        losses, _ = train_steps(model, opt, xs, device, dtype)
        final[str(dtype).removeprefix("torch.")] = sum(losses[-10:]) / len(losses[-10:])
    rel = abs(final["bfloat16"] - final["float32"]) / final["float32"]
    return {"steps": steps, "final_loss": final, "relative_difference": rel, "within_2_percent": rel <= 0.02}


def rnn_table(device, contexts: list[int], steps: int) -> list[dict]:
    rows = []
    for ctx in contexts:
        row: dict[str, Any] = {"context": ctx, "batch": 8}
        for arch in ("transformer", "lstm"):
            cfg = ModelConfig(arch=arch, vocab_size=4096, n_layer=2, n_head=4, d_model=256, max_seq_len=ctx)
            r = speed(arch, cfg, 8, device, torch.float32, False, steps, 1)
            row[f"{arch}_step_s"] = r["step_s"]
        row["lstm_over_transformer"] = row["lstm_step_s"] / row["transformer_step_s"]
        rows.append(row)
    return rows


def gpu_tests(timeout: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:randomly", "tests/lm/test_gpu.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return {"returncode": done.returncode, "tail": done.stdout.strip().splitlines()[-1:]}


def forja_run(steps: int, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="forja-gpu-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env["FORJA_HOME"] = tmp
        sets = [
            f"max_steps={steps}",
            "eval_every=100",
            "checkpoint_every=100",
            "device=cuda",
            "run.export_hf=false",
        ]
        cmd = [sys.executable, "-m", "forja.cli", "run", "--preset", "small", "--source", str(CORPUS)]
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd + [a for kv in sets for a in ("--set", kv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out: dict[str, Any] = {"returncode": done.returncode, "wall_s": time.perf_counter() - t0}
        try:
            out["result"] = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
        except ValueError:
            out["stderr_tail"] = done.stderr[-2000:]
        return out


def section(summary: dict, name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    try:
        summary[name] = fn(*args)
    except Exception as e:  # recorded, and the other sections still run
        summary[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    summary.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script on a CPU")
    ap.add_argument("--out", default="gpu_check.json")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    summary: dict[str, Any] = {"device": name, "torch": torch.__version__, "smoke": a.smoke}
    peak = matmul_peak_flops(
        device.type, torch.bfloat16, n=512 if a.smoke else 8192, seconds=0.5 if a.smoke else 2
    )
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    summary["bf16_peak"] = {"measured_flops": peak, "datasheet_flops": sheet}
    if device.type == "cuda":
        section(summary, "gpu_tests", gpu_tests, 120)
    steps, warmup = (2, 1) if a.smoke else (20, 5)
    shapes = {
        "small": dataclasses.replace(get_preset("small").model, vocab_size=4096),
        "gpt2-124m": dataclasses.replace(get_preset("gpt2-124m").model, vocab_size=50304),
    }
    if a.smoke:
        shapes = {
            k: dataclasses.replace(v, n_layer=1, d_model=64, n_head=2, max_seq_len=32)
            for k, v in shapes.items()
        }

    def speeds() -> list[dict]:
        rows = []
        for shape, cfg in shapes.items():
            r = speed(shape, cfg, 4 if a.smoke else 16, device, torch.bfloat16, not a.smoke, steps, warmup)
            r["mfu_measured_peak"] = r["model_flops_per_s"] / peak
            r["mfu_datasheet_peak"] = r["model_flops_per_s"] / sheet if sheet else None
            rows.append(r)
        return rows

    section(summary, "speed", speeds)
    parity_cfg = ModelConfig(
        vocab_size=256,
        n_layer=2 if a.smoke else 4,
        n_head=4,
        d_model=64 if a.smoke else 256,
        max_seq_len=64 if a.smoke else 256,
    )
    section(
        summary,
        "bf16_vs_fp32",
        bf16_vs_fp32,
        device,
        10 if a.smoke else 200,
        parity_cfg,
        4 if a.smoke else 32,
    )
    section(
        summary,
        "rnn_table",
        rnn_table,
        device,
        [16, 64] if a.smoke else [64, 256, 1024, 4096],
        1 if a.smoke else 5,
    )
    if device.type == "cuda":
        section(summary, "forja_run", forja_run, 400, 200)
    Path(a.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "gpu_tests"}, indent=2, default=str)[:6000])
    failed = [k for k, v in summary.items() if isinstance(v, dict) and "error" in v]
    print(f"[gpu_check] wrote {a.out}; sections with errors: {failed or 'none'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
