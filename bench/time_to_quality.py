"""Time to quality: the whole pipeline on the first 90% of tinyshakespeare, scored on the last 10%.

    python bench/time_to_quality.py [--preset tiny] [--set key=value ...] [--json]

The comparison convention of ../shared/corpora/README.md (nanoGPT's shakespeare_char): the first
90% of the bytes train, the last 10% validate. A char-level GPT reaches 2.72 bits per byte on that
10% in about 100 s on this kind of machine; Forja's target is <= 2.30 bits per byte.

Steps, in a fresh FORJA_HOME (nothing cached):
  1. `forja run --source first90.txt --preset tiny ...`: ingest, clean, tokenize (the 90% cut into
     chunks, a few percent held out for validation), train, evaluate, register. Timed end to end,
     Prefect's temporary server start-up included.
  2. `forja eval RUN_DIR --text last10.txt --json`: bits per byte on the held-out 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
# What the tiny preset is measured with: a word-sized BPE vocabulary and a small validation split.
DEFAULT_SETS = ["tokenize.vocab_size=8192", "tokenize.val_fraction=0.05", "evaluate.max_new_tokens=32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for forja run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    data = CORPUS.read_bytes()
    cut = int(len(data) * 0.9)
    with tempfile.TemporaryDirectory(prefix="forja-ttq-") as tmp:
        tmp = Path(tmp)
        (tmp / "first90.txt").write_bytes(data[:cut])
        (tmp / "last10.txt").write_bytes(data[cut:])
        env = {**os.environ, "FORJA_HOME": str(tmp / "home")}
        env.pop("PREFECT_API_URL", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        sets = [x for kv in [*DEFAULT_SETS, *a.sets] for x in ("--set", kv)]
        cmd = [
            sys.executable,
            "-m",
            "forja.cli",
            "run",
            "--source",
            str(tmp / "first90.txt"),
            "--preset",
            a.preset,
            "--out",
            str(tmp / "run"),
            *sets,
        ]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        pipeline_s = time.perf_counter() - t0
        if run.returncode != 0:
            raise SystemExit(f"forja run failed:\n{run.stderr[-3000:]}")
        ev = subprocess.run(
            [
                sys.executable,
                "-m",
                "forja.cli",
                "eval",
                str(tmp / "run"),
                "--text",
                str(tmp / "last10.txt"),
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if ev.returncode != 0:
            raise SystemExit(f"forja eval failed:\n{ev.stderr[-3000:]}")
        result = json.loads(ev.stdout)
        config = json.loads((tmp / "run" / "config.json").read_text())
        train_s = training_seconds(run.stderr, config["train"]["max_steps"])
    report = {
        "preset": a.preset,
        "sets": [*DEFAULT_SETS, *a.sets],
        "pipeline_s": round(pipeline_s, 1),
        "training_s": train_s,
        "held_out_bits_per_byte": round(result["bits_per_byte"], 4),
        "held_out_loss_nats_per_token": round(result["loss"], 4),
        "held_out_tokens": result["tokens"],
        "held_out_bytes": result["bytes"],
        "model": config["model"],
        "train": {
            k: config["train"].get(k)
            for k in (
                "max_steps",
                "batch_size",
                "seq_len",
                "lr",
                "warmup_steps",
                "optimizer",
                "muon_lr",
                "schedule",
            )
        },
        "reference_char_gpt_bits_per_byte": 2.72,
        "target_bits_per_byte": 2.30,
    }
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["model"]
        print(
            f"preset {a.preset} ({m['n_layer']}x{m['d_model']}, vocab {m['vocab_size']}, context {m['max_seq_len']}), "
            f"{report['train']['max_steps']} steps"
        )
        print(f"whole pipeline: {pipeline_s:.1f} s, of which training about {train_s} s")
        print(
            f"held-out 10%: {report['held_out_bits_per_byte']:.4f} bits per byte "
            f"(char-level GPT reference 2.72; target <= 2.30)"
        )


def training_seconds(log: str, max_steps: int) -> int | None:
    """Seconds from the train task's first log line to its last step, read off the log's clock."""

    def seconds(line: str) -> int:
        h, m, s = map(int, line[:8].split(":"))
        return h * 3600 + m * 60 + s

    start = re.search(r"^\d\d:\d\d:\d\d forja\.train: training .*$", log, re.M)
    end = re.search(rf"^\d\d:\d\d:\d\d forja\.train: step {max_steps}/{max_steps} .*$", log, re.M)
    if not (start and end):
        return None
    return (seconds(end.group(0)) - seconds(start.group(0))) % 86400


if __name__ == "__main__":
    main()
