"""Time-to-quality sweep: training settings compared on the same tokens, without the pipeline around them.

    python bench/ttq_sweep.py [--preset tiny] [--set key=value ...] [--tokens DIR]
    python bench/ttq_sweep.py --step-time [--preset tiny] [--set key=value ...]

Tokenizes the first 90% of tinyshakespeare once (ingest, clean, tokenize with the settings of
bench/time_to_quality.py; kept in --tokens and reused), trains the preset with the --set overrides
through `lm.train`, and scores the last 10% like `forja eval`. Prints one JSON line: the settings,
steps, training seconds, steps per second, held-out bits per byte and the load average, so points
measured at different loads can be compared by steps and by their own steps per second.

--step-time: seconds per training step of the preset's shape with AdamW and with Muon, their steps
taken in turn in one process (so both see the same load), medians of 9 each after 2 of warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dataclasses  # noqa: E402

import torch  # noqa: E402

from bench.time_to_quality import CORPUS  # noqa: E402
from lm.bench import train_steps  # noqa: E402
from lm.checkpoint import load_weights  # noqa: E402
from lm.config import apply_overrides, get_preset  # noqa: E402
from lm.evaluate import evaluate_text  # noqa: E402
from lm.models import build_model  # noqa: E402
from lm.optim import make_optimizer  # noqa: E402
from lm.tokenizer import Tokenizer  # noqa: E402
from lm.train import train  # noqa: E402


def tokens(folder: Path, cut_text: Path) -> Path:
    """The pipeline's data stages on the first 90%, as `forja run` runs them (vocabulary 8192)."""
    from tasks.clean import CleanConfig, run_clean
    from tasks.ingest import IngestConfig, run_ingest
    from tasks.tokenize import TokenizeConfig, run_tokenize

    if not (folder / "tokens" / "manifest.json").exists():
        run_ingest([str(cut_text)], folder / "ingest", IngestConfig())
        run_clean(folder / "ingest", folder / "clean", CleanConfig())
        run_tokenize(folder / "clean", folder / "tokens", TokenizeConfig(vocab_size=8192, val_fraction=0.05))
    return folder / "tokens"


def step_times(model_cfg, train_cfg, vocab: int = 8192) -> dict:
    """Median seconds per step with each optimiser, the steps interleaved."""
    model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    seq = train_cfg.seq_len or model_cfg.max_seq_len
    x = torch.randint(0, vocab, (train_cfg.batch_size, seq + 1), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        model = build_model(model_cfg)
        runs[name] = (model, make_optimizer(model, dataclasses.replace(train_cfg, optimizer=name), None), [])
    for _ in range(11):
        for model, opt, times in runs.values():
            times += train_steps(model, opt, [x], torch.device("cpu"), torch.float32)[1]
    out = {name: round(sorted(t[2:])[4], 3) for name, (_, _, t) in runs.items()}
    return out | {"muon/adamw": round(out["muon"] / out["adamw"], 3), "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--tokens", type=Path, default=Path(tempfile.gettempdir()) / "forja-ttq-sweep")
    ap.add_argument("--step-time", action="store_true", help="time AdamW and Muon steps; no training run")
    a = ap.parse_args()
    preset = get_preset(a.preset)
    model_cfg, train_cfg = apply_overrides(preset.model, preset.train, [*a.sets, "device=cpu"])
    if a.step_time:
        print(json.dumps({"sets": a.sets, "seconds_per_step": step_times(model_cfg, train_cfg)}))
        return
    data = CORPUS.read_bytes()
    cut = int(len(data) * 0.9)
    a.tokens.mkdir(parents=True, exist_ok=True)
    (a.tokens / "first90.txt").write_bytes(data[:cut])
    token_dir = tokens(a.tokens, a.tokens / "first90.txt")
    with tempfile.TemporaryDirectory(prefix="forja-ttq-run-") as run:
        t0 = time.perf_counter()
        result = train(model_cfg, train_cfg, token_dir, Path(run) / "run")
        train_s = time.perf_counter() - t0
        saved = json.loads((Path(run) / "run" / "config.json").read_text())
        model = build_model(type(model_cfg)(**saved["model"]))
        load_weights(result.checkpoint, model)
    model.eval()
    text = data[cut:].decode("utf-8")
    ev = evaluate_text(model, Tokenizer(token_dir / "tokenizer.model"), text, model.cfg.max_seq_len)
    print(
        json.dumps(
            {
                "sets": a.sets,
                "steps": result.step,
                "train_s": round(train_s, 1),
                "steps_per_s": round(result.step / result.elapsed_s, 3),
                "held_out_bpb": round(ev.bits_per_byte, 4),
                "val_bpb": round(result.metrics.get("val_bpb", float("nan")), 4),
                "load": os.getloadavg()[0],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
