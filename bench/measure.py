"""What each bench step measures about itself, and a runner that gives every step its own interpreter.

A step runs in a fresh `python SCRIPT --step ...` so that its peak RSS is its own (getrusage's
ru_maxrss never goes down), and prints one JSON line of figures as its last line of output.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mb() -> float:
    """Peak resident memory of the largest child process waited for (worker processes)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children, all threads: the work done, whatever
    else the machine runs at the same time."""
    return sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )


def run_step(script: str | Path, args: list[str]) -> dict:
    """Run `python SCRIPT ARGS` from the project root; return the JSON of its last output line."""
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{Path(script).name} {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
