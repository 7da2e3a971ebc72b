"""bench/gpu_check.sh is ready for a GPU it has never seen: it parses, says what it needs on a
machine without CUDA, and its code runs end to end on a CPU at tiny sizes (--smoke)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from support import ROOT, child_env

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a machine with CUDA the script measures instead of explaining"
)
def test_without_cuda_the_script_says_what_it_needs_and_exits_2():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env=child_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA device" in done.stderr and "--device cpu --smoke" in done.stderr


def test_every_section_runs_on_a_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--device",
            "cpu",
            "--smoke",
            "--out",
            str(out),
        ],
        env=child_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(out.read_text())
    assert [r["shape"] for r in s["speed"]] == ["small", "gpt2-124m"]
    assert all(r["tokens_per_s"] > 0 and r["mfu_measured_peak"] > 0 for r in s["speed"])
    assert set(s["bf16_vs_fp32"]["final_loss"]) == {"float32", "bfloat16"}
    assert [r["context"] for r in s["rnn_table"]] == [16, 64]
    assert all(r["lstm_step_s"] > 0 and r["transformer_step_s"] > 0 for r in s["rnn_table"])
