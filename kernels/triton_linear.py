"""Triton dequantize-matmul kernels: y = x @ dequant(W)^T (+ bias), W in scaled fp8 or NVFP4.

The weight is never materialised in high precision: each program loads a tile of the quantized
weight, decodes it in registers (fp8 by bitcast; E2M1 nibbles by their bit fields times the E4M3
block scale) and feeds tl.dot with fp32 accumulation; the per-tensor scale is applied once at the
end. These serve GPUs without native fp8/nvfp4 matmul (fp8 below SM 8.9, nvfp4 below SM 10). With
TRITON_INTERPRET=1 they run on the CPU, which is how the tests check them against the reference.

NVFP4 block scales are taken row-major ([N, K/16], as kernels.nvfp4.from_blocked returns them).
"""
from __future__ import annotations

import os

import torch

try:  # triton ships with the CUDA builds of torch; absent elsewhere
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def available(device: torch.device | str | None = None) -> bool:
    """True when the kernels can run for tensors on `device`: a CUDA device, or the interpreter."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    dev = torch.device(device) if device is not None else None
    return dev is not None and dev.type == "cuda" and torch.cuda.is_available()


# the kernels' FMT (compared as literals inside them: compiled Triton reads no plain globals)
FP8_E4M3, FP8_E5M2, NVFP4 = 0, 1, 2

if triton is not None:
    @triton.jit
    def _weight_tile(w_ptr, s_ptr, rn, kk, N, K, FMT: tl.constexpr):
        """The [BK, BN] tile of W^T at rows rn, columns kk, decoded to fp32 (per-tensor scale not applied)."""
        wmask = (rn[None, :] < N) & (kk[:, None] < K)
        if FMT == 2:  # NVFP4
            byte = tl.load(w_ptr + rn[None, :] * (K // 2) + kk[:, None] // 2, mask=wmask, other=0)
            shift = ((1 - kk[:, None] % 2) * 4).to(tl.uint8)  # even element in the high nibble
            code = (byte >> shift) & 0xF
            e = ((code >> 1) & 3).to(tl.int32)
            m = (code & 1).to(tl.float32)
            mag = tl.where(e == 0, m * 0.5, (1.0 + m * 0.5) * tl.exp2((e - 1).to(tl.float32)))
            val = tl.where((code & 8) != 0, -mag, mag)
            sb = tl.load(s_ptr + rn[None, :] * (K // 16) + kk[:, None] // 16, mask=wmask, other=0)
            return val * sb.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        wb = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=wmask, other=0)
        if FMT == 1:  # FP8_E5M2
            return wb.to(tl.float8e5, bitcast=True).to(tl.float32)
        return wb.to(tl.float8e4nv, bitcast=True).to(tl.float32)

    @triton.jit
    def _dequant_mm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, gscale_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                           FMT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pm = tl.program_id(0)
        pn = tl.program_id(1)
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + rk
            a = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            acc += tl.dot(a.to(tl.float32), _weight_tile(w_ptr, s_ptr, rn, kk, N, K, FMT), input_precision="ieee")
        acc = acc * tl.load(gscale_ptr)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def _launch(fmt, x, w, block_scales, gscale, bias, N):
    if triton is None:
        raise RuntimeError("triton is not installed")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    M, K = x2.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    BM = 16 if M <= 16 else 32 if M <= 32 else 64
    BN, BK = 64, 32
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _dequant_mm_kernel[grid](x2, w, block_scales if block_scales is not None else w, bias if bias is not None else x2,
                             y, gscale.reshape(1).float().to(x.device), M, N, K,
                             HAS_BIAS=bias is not None, FMT=fmt, BM=BM, BN=BN, BK=BK)
    return y.reshape(*shape[:-1], N)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
    """x [..., K] @ (weight fp8 [N, K] * scale)^T + bias, output in x's dtype."""
    if weight.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"fp8_linear takes a float8 weight, not {weight.dtype}")
    fmt = FP8_E5M2 if weight.dtype == torch.float8_e5m2 else FP8_E4M3
    return _launch(fmt, x, weight.contiguous().view(torch.uint8), None, scale, bias, weight.shape[0])


def nvfp4_linear(x: torch.Tensor, packed: torch.Tensor, block_scales: torch.Tensor, per_tensor: torch.Tensor,
                 bias: torch.Tensor | None = None):
    """x [..., K] @ dequant(packed [N, K/2], block_scales e4m3 [N, K/16] row-major, per_tensor)^T + bias."""
    K, N = x.shape[-1], packed.shape[0]
    if packed.shape[1] * 2 != K or tuple(block_scales.shape) != (N, K // 16):
        raise ValueError(f"nvfp4 shapes do not fit: x K={K}, packed {tuple(packed.shape)}, scales {tuple(block_scales.shape)}")
    return _launch(NVFP4, x, packed.contiguous(), block_scales.contiguous().view(torch.uint8), per_tensor, bias, N)
