#!/usr/bin/env bash
# GPU readiness: at most 8 minutes on one CUDA GPU; writes one JSON summary (default gpu_check.json).
# What it measures: see bench/gpu_check.py. Without a GPU it says so and exits 2.
#   bash bench/gpu_check.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" bench/gpu_check.py --device cuda --out "${1:-gpu_check.json}"
