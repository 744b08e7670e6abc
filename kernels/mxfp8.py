"""MXFP8: fp8 e4m3 values in blocks of 32 along a row, each block with a power-of-two E8M0 scale
(ComfyUI's `mxfp8`): the torch reference.

Per block: scale = 2^ceil(log2(amax / 448)) (biased exponent clamped to [0, 254], at least 2^-127); an
all-zero block stores exponent 0 and zeros. Values are x / scale clamped to +-448 and rounded to e4m3.
The (rows, cols/32) exponents are stored as uint8 in the cuBLAS block-scaling layout (the one nvfp4's
scales use, kernels/nvfp4.to_blocked). Bit-identical to comfy-kitchen's eager `quantize_mxfp8`."""
from __future__ import annotations

import torch

from .nvfp4 import from_blocked, to_blocked

BLOCK = 32
E4M3_MAX = 448.0
BIAS = 127


def _exp_to_f32(e: torch.Tensor) -> torch.Tensor:
    bits = e.to(torch.int32) << 23
    return torch.where(e == 0, torch.zeros_like(bits), bits).view(torch.float32)


def quantize(x: torch.Tensor):
    """(fp8 e4m3 [rows, cols], blocked uint8 exponents) of a 2-D tensor whose columns divide into 32."""
    if x.ndim != 2 or x.shape[1] % BLOCK:
        raise ValueError("mxfp8 quantizes 2-D weights whose rows divide into blocks of 32")
    rows, cols = x.shape
    q = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=x.device)
    exps = torch.empty((rows, cols // BLOCK), dtype=torch.uint8, device=x.device)
    step = max(1, (1 << 20) // cols)  # rows per chunk: about a million values
    for r in range(0, rows, step):
        blocks = x[r:r + step].reshape(-1, cols // BLOCK, BLOCK)
        amax = blocks.abs().amax(dim=-1)
        need = (amax.float() / E4M3_MAX).clamp_(min=2.0 ** -127)
        e = (torch.ceil(torch.log2(need)).to(torch.int32) + BIAS).clamp_(0, 254).to(torch.uint8)
        zero = amax == 0
        scale = torch.where(zero, torch.ones_like(need), _exp_to_f32(e))
        v = blocks.float() / scale.unsqueeze(-1)
        v = torch.where(zero.unsqueeze(-1), torch.zeros_like(v), v).clamp_(-E4M3_MAX, E4M3_MAX)
        q[r:r + step] = v.reshape(-1, cols).to(torch.float8_e4m3fn)
        exps[r:r + step] = torch.where(zero, torch.zeros_like(e), e)
    return q, to_blocked(exps)


def dequantize(q: torch.Tensor, blocked: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    rows, cols = q.shape
    e = from_blocked(blocked.view(torch.uint8), rows, cols // BLOCK)
    return (q.float().reshape(rows, -1, BLOCK) * _exp_to_f32(e).unsqueeze(-1)).reshape(rows, cols).to(dtype)
