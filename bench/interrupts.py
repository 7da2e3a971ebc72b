"""Time from Ctrl-C to the prompt, in each stage of `forja run`.

For each stage, a fresh `forja run` (its own Forja home, its own process group, as a terminal's
foreground job) on a generated corpus large enough that every stage lasts seconds; when the log
shows the stage at work, SIGINT goes to the whole group, as a terminal sends Ctrl-C. Printed per
stage: seconds from the signal to the exit, the exit code, whether a traceback was printed, and the
last line (the resume command).

    python bench/interrupts.py [--mb 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"

# the log line that shows each stage at work (a stage's own progress, or the line before its first)
MARKERS = {
    "ingest": "ingest shard",
    "clean": "forja.clean: part-",
    "tokenize": "training a bpe tokenizer",
    "train": "step 20/",
    "evaluate": "step 60/60",
}
SETS = [
    "ingest.split=blank_line",
    "max_steps=60",
    "log_every=10",
    "checkpoint_every=20",
    "run.export_hf=false",
    "evaluate.max_bytes=2000000",
    "tokenize.sample_bytes=2000000",
]


def corpus(folder: Path, mb: float) -> Path:
    """Speeches of tinyshakespeare drawn at random, with a counter so few are duplicates."""
    speeches = [s for s in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    rng = random.Random(0)
    folder.mkdir(parents=True)
    n = 0
    for i in range(32):
        with open(folder / f"part-{i:02d}.txt", "w", encoding="utf-8") as f:
            size = 0
            while size < mb * 1e6 / 32:
                text = f"{rng.choice(speeches)}\n[{n}]\n\n"
                f.write(text)
                size += len(text)
                n += 1
    return folder


def interrupt_in(stage: str, src: Path, work: Path) -> dict:
    home = work / f"home-{stage}"
    log = work / f"{stage}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"FORJA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "forja.cli", "run", "--source", str(src)]
    cmd += [a for kv in [*SETS, f"run.dataset={stage}"] for a in ("--set", kv)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    deadline = time.monotonic() + 900
    while MARKERS[stage] not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        return {"stage": stage, "error": f"exited {proc.returncode} before {MARKERS[stage]!r}"}
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=300)
    seconds = time.monotonic() - t0
    text = log.read_text()
    return {
        "stage": stage,
        "seconds_to_prompt": round(seconds, 2),
        "exit_code": rc,
        "traceback": "Traceback" in text,
        "lines_after_signal": len(text[text.find(MARKERS[stage]) :].splitlines()),
        "last_line": text.strip().splitlines()[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0, help="corpus size (MB of text)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = corpus(Path(tmp) / "corpus", args.mb)
        rows = [interrupt_in(stage, src, Path(tmp)) for stage in MARKERS]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        if "error" in r:
            print(f"{r['stage']:9} {r['error']}")
        else:
            print(
                f"{r['stage']:9} {r['seconds_to_prompt']:6.2f} s to the prompt, exit {r['exit_code']}, "
                f"traceback: {'yes' if r['traceback'] else 'no'}; last line: {r['last_line']}"
            )


if __name__ == "__main__":
    main()
