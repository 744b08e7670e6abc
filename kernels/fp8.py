"""Scaled fp8 (e4m3fn, e5m2) with one fp32 scale per tensor: the torch reference.

Quantize: q = clamp(x * (1/scale) in x's dtype, -max, max) cast to fp8 (round to nearest even);
dequantize: q * scale in the output dtype. Bit-identical to comfy-kitchen's eager backend; `precise`
(what the pack's file writer uses) takes the product in float32, one rounding instead of two, as
convert-to-quant does; and always where 1/scale overflows x's dtype (an fp16 weight whose amax is below 448/65504, or below 57344/65504 for
e5m2): kitchen's product is then inf and its zeros NaN, the pack's is taken in float32."""
from __future__ import annotations

import torch

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def per_tensor_scale(x: torch.Tensor, dtype=torch.float8_e4m3fn) -> torch.Tensor:
    """amax / fp8 max, as float32 (a zero tensor gets scale 1)."""
    amax = x.detach().abs().amax().float()
    scale = amax / FP8_MAX[dtype]
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize(x: torch.Tensor, scale: torch.Tensor | None = None, dtype=torch.float8_e4m3fn, precise: bool = False):
    """(fp8 tensor, float32 scale). `precise`: the product x * (1/scale) taken in float32 (one rounding,
    to fp8) instead of x's dtype (kitchen's eager rounds it to bf16/fp16 first, then to fp8)."""
    if dtype not in FP8_MAX:
        raise ValueError(f"fp8 dtype must be float8_e4m3fn or float8_e5m2, not {dtype}")
    if scale is None:
        scale = per_tensor_scale(x, dtype)
    lim = FP8_MAX[dtype]
    inv = (1.0 / scale).to(x.dtype)
    # 1/scale beyond x's dtype (fp16 weights of small amax, e5m2 below ~0.9): kitchen's eager gives inf/NaN there
    precise = precise or not torch.isfinite(inv)
    math_dtype = torch.float32 if precise else x.dtype
    if precise:
        inv = (1.0 / scale).float()
    flat = x.reshape(-1)
    q = torch.empty(flat.shape, dtype=dtype, device=x.device)
    step = 1 << 20  # chunks that stay in cache: the three passes then cost about one
    buf = torch.empty(min(step, flat.numel()), dtype=math_dtype, device=x.device)  # one scratch buffer, reused
    for i in range(0, flat.numel(), step):
        chunk = flat[i:i + step]
        t = torch.mul(chunk.to(math_dtype), inv, out=buf[: chunk.numel()])
        q[i:i + step] = t.clamp_(-lim, lim)
    return q.view(x.shape), scale.float()


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)
