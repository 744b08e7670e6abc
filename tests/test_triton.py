"""The Triton dequant-matmul kernels under the Triton interpreter (TRITON_INTERPRET=1, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except Exception:
    HAVE_TRITON = False


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed with this torch")
def test_triton_kernels_match_the_reference_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")  # must be set before triton.jit runs
    proc = subprocess.run([sys.executable, str(HERE / "triton_check.py")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows and "error" not in rows[0], rows[:1]
    bad = [r for r in rows if not (r["ok"] and r["dtype_ok"])]
    assert len(rows) == 4 * 5 * 2 * 3
    assert not bad, bad[:5]


def test_triton_is_only_used_where_it_can_run():
    import torch
    from modelsmith.kernels import qlinear, triton_linear
    assert not triton_linear.available("cpu") or os.environ.get("TRITON_INTERPRET") == "1"
    assert qlinear.compute_path("nvfp4", "cpu") == "dequantize then matmul (torch)"
    assert qlinear.compute_path("float8_e4m3fn", torch.device("cpu")) == "dequantize then matmul (torch)"
