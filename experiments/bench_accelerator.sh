#!/usr/bin/env bash
# One-GPU benchmark of the SFT / DPO train steps and generation (see experiments/bench_accelerator.py).
#   bash experiments/bench_accelerator.sh [--out /tmp/bench.json] [--smoke] [...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python experiments/bench_accelerator.py "$@"
