#!/usr/bin/env bash
# The Comfy Registry's own checks, as CI runs them: `comfy node validate` (comfy-cli, with ruff) on
# the pack and `comfy-test lint --strict` on its Python and web/ extension. The tools live in their
# own environment (.venv-tools), never in a runtime's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOOLS="$ROOT/.venv-tools"
PINS="comfy-cli==1.23.0 ruff==0.17.6 comfy-test==0.4.15"
PY_BASE=${PYTHON:-python3.11}
command -v "$PY_BASE" >/dev/null 2>&1 || PY_BASE=python3
stamp="$TOOLS/.modelsmith-$(echo "$PINS" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[lint] installing $PINS into .venv-tools"
  [ -x "$TOOLS/bin/python" ] || "$PY_BASE" -m venv "$TOOLS"
  PIP_NO_CACHE_DIR=1 "$TOOLS/bin/python" -m pip install -q $PINS
  rm -f "$TOOLS"/.modelsmith-* && touch "$stamp"
fi
export PATH="$TOOLS/bin:$PATH"
echo "[lint] comfy node validate"
comfy --skip-prompt --no-enable-telemetry node validate
echo "[lint] comfy-test lint --strict"
comfy-test lint --strict .
