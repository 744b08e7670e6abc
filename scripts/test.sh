#!/usr/bin/env bash
# Run the whole suite once per runtime named: scripts/test.sh 0.3.75 0.29
# Each runtime runs in its own environment; a runtime that is missing or fails fails the whole run.
# PYTEST_ARGS passes extra arguments to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/runtimes.sh
RUNTIMES=${*:-$(default_runtimes)}
# the ComfyUI-free tests run once, in the main target when it is among the runtimes (else the first)
COMFY_FREE_ON=$(for r in $RUNTIMES; do echo "$r"; done | grep -x "0.33" || echo "${RUNTIMES%% *}")
declare -A RESULT
status=0
for rt in $RUNTIMES; do
  runtime_dirs "$rt" || { RESULT[$rt]="missing"; status=1; continue; }
  if [ "$rt" = fast ]; then  # the ComfyUI-free tests alone, without any ComfyUI (make test-fast)
    echo "================ fast tier: no ComfyUI ================"
    start=$SECONDS
    # both cores (pytest-xdist): the subprocess tests (CLI, pickle child) wait on process start-up
    MODELSMITH_RUNTIME=fast COMFYUI_PATH=/nonexistent "$VENV/bin/pytest" -q -rs -n 2 tests ${PYTEST_ARGS:-}
    rc=$?
    echo "[test] fast tier took $((SECONDS - start)) s"
    if [ $rc -eq 0 ]; then RESULT[$rt]="passed"; else RESULT[$rt]="FAILED (pytest exit $rc)"; status=1; fi
    continue
  fi
  if [ ! -x "$VENV/bin/pytest" ] || [ ! -f "$COMFY/main.py" ]; then
    echo "[test] runtime $rt is not set up (run make setup)" >&2; RESULT[$rt]="missing"; status=1; continue
  fi
  echo "================ runtime $rt: ComfyUI $COMFY ================"
  COMFYUI_PATH="$COMFY" MODELSMITH_RUNTIME="$rt" MODELSMITH_COMFY_FREE_ON="$COMFY_FREE_ON" \
    "$VENV/bin/pytest" -q -rs tests ${PYTEST_ARGS:-}
  rc=$?
  if [ $rc -eq 0 ]; then RESULT[$rt]="passed"; else RESULT[$rt]="FAILED (pytest exit $rc)"; status=1; fi
done
echo "================ summary ================"
for rt in $RUNTIMES; do echo "runtime $rt: ${RESULT[$rt]:-not run}"; done
exit $status
