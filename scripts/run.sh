#!/usr/bin/env bash
# Start ComfyUI of one runtime with the pack: scripts/run.sh RUNTIME [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/runtimes.sh
runtime_dirs "$1"
PORT=${2:-8188}
CPU_FLAG=$("$VENV/bin/python" -c "import torch;print('' if torch.cuda.is_available() else '--cpu')")
cd "$COMFY"
exec "$VENV/bin/python" main.py --listen 127.0.0.1 --port "$PORT" $CPU_FLAG
