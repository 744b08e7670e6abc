#!/usr/bin/env bash
# Run every benchmark on one runtime: scripts/bench.sh RUNTIME
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/runtimes.sh
runtime_dirs "$1"
for b in benchmarks/*.py; do
  echo "== $b (runtime $1)"
  COMFYUI_PATH="$COMFY" "$VENV/bin/python" "$b" || exit 1
done
