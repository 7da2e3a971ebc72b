"""What each bench step measures about itself, and a runner that gives every step its own interpreter.

A step runs in a fresh `python SCRIPT --step ...` so that its peak RSS is its own (getrusage's
ru_maxrss never goes down), and prints one JSON line of figures as its last line of output.
"""

from __future__ import annotations

import contextlib
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


def tree_sample(pid: int, cpu: dict[int, float]) -> float:
    """Resident memory of a process and all its descendants now (MB; 0 once it has gone); records
    in `cpu` each one's CPU seconds so far (user + system, all threads) by pid."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess), p.oneshot():
            total += p.memory_info().rss
            t = p.cpu_times()
            cpu[p.pid] = t.user + t.system
    return total / 2**20


def run_step_tree(
    script: str | Path, args: list[str], every_s: float = 0.05, python: str = sys.executable
) -> dict:
    """`run_step` (in the interpreter `python`), also sampling the step's whole process tree (its
    worker processes and their threads included) every `every_s` seconds. Adds `peak_tree_rss_mb`,
    the largest sum of resident memory seen (what the machine had to hold at once, which ru_maxrss
    of single processes does not give), and `tree_cpu_s`, the CPU seconds of every process of the
    tree as last seen (a worker's last `every_s` may be missed; getrusage misses more: a pool's
    workers that the step never waits for)."""
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, str(script), *args], stdout=out, stderr=err, cwd=ROOT)
        peak, cpu = 0.0, {}
        while proc.poll() is None:
            peak = max(peak, tree_sample(proc.pid, cpu))
            time.sleep(every_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{Path(script).name} {' '.join(args)} failed:\n{stderr[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    return {**figures, "peak_tree_rss_mb": round(peak, 1), "tree_cpu_s": round(sum(cpu.values()), 1)}
