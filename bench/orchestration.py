"""Orchestration overhead of `forja run`: the wall time that is not the stages' own work.

    python bench/orchestration.py [--rounds 2] [--json]

Each round runs the same small `forja run` (150 kB of tinyshakespeare, a 2-layer model, 20 steps)
three ways, each a real Prefect API (the temporary server) and a real MLflow store:
  fresh, migrating   a new FORJA_HOME with an empty cache (FORJA_CACHE_DIR): the databases are
                     migrated in the run, as before forja/stores.py
  fresh              a new FORJA_HOME, the migrated empty databases copied from the cache
  warm               the same home again, one more training step: the data stages are Cached

Work is the union of the task runs' intervals, read from the home's Prefect database; overhead is
the wall time of the command minus that. The phases: from the command's start to the flow run's
start (imports, the server, the databases), inside the flow run between tasks, and from the flow
run's end to the command's exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT / "tests"))
from support import FAST  # noqa: E402  (the small run the test suite uses: the same sizes)

SETS = [*(kv for kv in FAST if kv != "run.workers=2"), "run.export_hf=false"]


def _ts(value: str) -> float:
    t = datetime.fromisoformat(value.replace(" ", "T"))  # Prefect stores UTC
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def run_once(home: Path, corpus: Path, cache: Path, extra: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"FORJA_HOME": str(home), "FORJA_CACHE_DIR": str(cache)}
    sets = [x for kv in [*SETS, *extra] for x in ("--set", kv)]
    db = home / "prefect" / "prefect.db"
    seen = set()
    if db.is_file():
        seen = {r for (r,) in sqlite3.connect(db).execute("SELECT id FROM flow_run")}
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "forja.cli", "run", "--source", str(corpus), *sets],
        env=env,
        capture_output=True,
        text=True,
    )
    t1 = time.time()
    if done.returncode != 0:
        raise SystemExit(f"forja run failed:\n{done.stderr[-3000:]}")
    con = sqlite3.connect(db)
    flows = [
        (i, _ts(s), _ts(e))
        for i, s, e in con.execute(
            "SELECT id, start_time, end_time FROM flow_run WHERE parent_task_run_id IS NULL"
        )
        if i not in seen
    ]
    (_, f0, f1) = flows[0]
    tasks = [
        (_ts(s), _ts(e))
        for s, e in con.execute("SELECT start_time, end_time FROM task_run WHERE end_time IS NOT NULL")
    ]
    tasks = [(a, b) for a, b in tasks if a >= f0 - 0.5 and b <= f1 + 0.5]  # this run's tasks
    work = _union(tasks)
    return {
        "wall_s": t1 - t0,
        "work_s": work,
        "overhead_s": t1 - t0 - work,
        "to_flow_start_s": f0 - t0,
        "in_flow_s": (f1 - f0) - work,
        "after_flow_s": t1 - f1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    rows: dict[str, list[dict[str, float]]] = {"fresh, migrating": [], "fresh": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="forja-orch-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        corpus.write_bytes(CORPUS.read_bytes()[:150_000])
        cache = tmp / "cache"
        for r in range(a.rounds):
            empty = tmp / f"empty-cache-{r}"
            rows["fresh, migrating"].append(run_once(tmp / f"home-m{r}", corpus, empty, []))
            run_once(tmp / f"prime-{r}", corpus, cache, []) if r == 0 else None  # fills the cache
            rows["fresh"].append(run_once(tmp / f"home-f{r}", corpus, cache, []))
            rows["warm"].append(run_once(tmp / f"home-f{r}", corpus, cache, [f"max_steps={21 + r}"]))
    summary = {k: {m: round(sum(x[m] for x in v) / len(v), 2) for m in v[0]} for k, v in rows.items()}
    if a.json:
        print(json.dumps({"rounds": rows, "mean": summary}, indent=2))
        return
    print(f"load average before: {load:.1f}; {a.rounds} round(s), means")
    print(
        f"{'':18}{'wall':>7}{'work':>7}{'overhead':>10}{'to flow':>9}{'in flow':>9}{'after':>7}  overhead range"
    )
    for k, m in summary.items():
        spread = sorted(x["overhead_s"] for x in rows[k])
        print(
            f"{k:18}{m['wall_s']:7.1f}{m['work_s']:7.1f}{m['overhead_s']:10.1f}"
            f"{m['to_flow_start_s']:9.1f}{m['in_flow_s']:9.1f}{m['after_flow_s']:7.1f}"
            f"  {spread[0]:.1f}-{spread[-1]:.1f}"
        )


if __name__ == "__main__":
    main()
