#!/usr/bin/env bash
# Start ComfyUI of one runtime with the pack: scripts/run.sh RUNTIME [PORT]
# The pack is loaded from .cache/nodes through an extra_model_paths file (nothing is linked into the
# ComfyUI tree), or from the tree itself when the pack was cloned into its custom_nodes/. A user's
# ComfyUI (RUNTIME=user) runs on its own Python, as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/runtimes.sh
runtime_dirs "$1"
PORT=${2:-8188}
if [ "$1" = user ]; then
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY does not look like ComfyUI (no main.py)" >&2; exit 2; }
  PY=$(user_python)
else
  PY="$VENV/bin/python"
fi
EXTRA=()
if pack_in_tree "$COMFY"; then
  echo "[run] the pack is in $COMFY/custom_nodes already: loaded from there"
else
  cfg="$ROOT/.cache/run-paths.yaml"
  printf 'modelsmith_pack:\n    base_path: %s\n    custom_nodes: .\n' "$(pack_nodes_dir)" > "$cfg"
  EXTRA=(--extra-model-paths-config "$cfg")
fi
CPU_FLAG=$("$PY" -c "import torch;print('' if torch.cuda.is_available() else '--cpu')")
cd "$COMFY"
exec "$PY" main.py --listen 127.0.0.1 --port "$PORT" $CPU_FLAG "${EXTRA[@]}"
