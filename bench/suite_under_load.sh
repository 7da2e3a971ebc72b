#!/usr/bin/env bash
# The full CI suite N times in a row beside a parallel CPU load (issue #14): each run on a fresh
# clean clone of one commit, with `stress-ng` keeping every core busy the whole time.
#
#   bash bench/suite_under_load.sh [RUNS] [OUT_DIR]      (defaults: 3, /tmp/suite-under-load)
#
# Needs stress-ng (apt-get install -y stress-ng) and a set-up .venv in this checkout (make setup),
# which each clone copies instead of building its own. Prints one line per run (start, end, exit
# status, load average, pytest's summary line) and keeps each run's log in OUT_DIR. Started in the
# background (`... &`), as here, the suite inherits SIGINT ignored; the tests must not mind.
set -u
RUNS=${1:-3}
OUT=${2:-/tmp/suite-under-load}
SRC=$(git rev-parse --show-toplevel)
REV=$(git -C "$SRC" rev-parse HEAD)
WORK="$OUT/work"
mkdir -p "$OUT"
command -v stress-ng >/dev/null || { echo "stress-ng is not installed: apt-get install -y stress-ng" >&2; exit 2; }
[ -x "$SRC/.venv/bin/python" ] || { echo "no .venv in $SRC: run make setup first" >&2; exit 2; }

stress-ng --cpu "$(nproc)" --cpu-method matrixprod > "$OUT/stress.log" 2>&1 &
STRESS=$!
trap 'kill $STRESS 2>/dev/null' EXIT
echo "commit $REV, $RUNS runs, stress-ng on $(nproc) cores" | tee -a "$OUT/summary.txt"
for i in $(seq 1 "$RUNS"); do
  rm -rf "$WORK" && mkdir -p "$WORK"
  ln -s "$(cd "$SRC/.." && pwd)/shared" "$WORK/shared"  # the test corpus, beside the checkout
  git clone -q "$SRC" "$WORK/main" && git -C "$WORK/main" checkout -q "$REV"
  cp -a "$SRC/.venv" "$WORK/main/.venv"
  # the copied venv's editable install points at $SRC: point it at the clone
  (cd "$WORK/main" && .venv/bin/python -m pip install -q --no-deps -e . > /dev/null && touch .venv/.installed)
  start="run $i start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd "$WORK/main" && CI=true bash .ci/run > "$OUT/run$i.log" 2>&1)
  rc=$?
  line=$(grep -E '^=+ .*(passed|failed)' "$OUT/run$i.log" | tail -1)
  echo "$start; end $(date +%T) rc=$rc load $(cut -d' ' -f1-3 /proc/loadavg) $line" | tee -a "$OUT/summary.txt"
done
