"""Run with TRITON_INTERPRET=1: the Triton dequant-matmul kernels against the torch reference.

Prints one JSON line per case: {"case": ..., "max_err": ..., "tol": ..., "ok": ...}."""
import json
import sys

import torch
import torch.nn.functional as F

from modelsmith.kernels import fp8, nvfp4, triton_linear


def weights(kind, n, k, g):
    w = torch.randn(n, k, generator=g) / k ** 0.5
    if kind == "zeros":
        w.zero_()
    elif kind == "huge":
        w[0, 0] = 3e4
    elif kind == "subnormal":
        w = w * 1e-39
    elif kind == "mixed":
        w[:, : k // 2] *= 1e-3
    return w


def main():
    if not triton_linear.available("cpu"):
        print(json.dumps({"error": "triton interpreter not available"}))
        return 1
    g = torch.Generator().manual_seed(0)
    for (m, k, n) in [(1, 16, 16), (5, 96, 80), (33, 48, 40), (70, 64, 130)]:
        for kind in ("normal", "zeros", "huge", "subnormal", "mixed"):
            for xdt in (torch.float32, torch.bfloat16):
                w = weights(kind, n, k, g)
                x = torch.randn(m, k, generator=g).to(xdt)
                bias = (torch.randn(n, generator=g) * 0.1).to(xdt) if n % 2 == 0 else None
                for fmt in ("e4m3fn", "e5m2", "nvfp4"):
                    if fmt == "nvfp4":
                        p, blocked, s2 = nvfp4.quantize(w)
                        rows = nvfp4.from_blocked(blocked, n, k // 16).contiguous()
                        y = triton_linear.nvfp4_linear(x, p, rows, s2, bias)
                        wd = nvfp4.dequantize(p, blocked, s2, torch.float32)
                    else:
                        dt = torch.float8_e4m3fn if fmt == "e4m3fn" else torch.float8_e5m2
                        q, s = fp8.quantize(w, dtype=dt)
                        y = triton_linear.fp8_linear(x, q, s, bias)
                        wd = fp8.dequantize(q, s, torch.float32)
                    ref = F.linear(x.float(), wd, None if bias is None else bias.float())
                    scale = float(ref.abs().max()) or 1.0
                    # fp32: summation order only; bf16: the output's own rounding (8 bits)
                    tol = 1e-5 * scale * k ** 0.5 if xdt == torch.float32 else scale * 2 ** -7
                    err = float((y.float() - ref).abs().max()) if torch.isfinite(y).all() else float("inf")
                    case = f"{fmt} {kind} m{m} k{k} n{n} {str(xdt).replace('torch.', '')} bias={bias is not None}"
                    print(json.dumps({"case": case, "max_err": err, "tol": tol, "ok": err <= tol,
                                      "dtype_ok": y.dtype == xdt and y.shape == (m, n)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
