"""int8 with one fp32 scale per tensor (ComfyUI's `int8_tensorwise`): the torch reference.

Quantize: scale = amax / 127 in float32 (at least 1e-30); q = round-half-even(x / scale), the division
in x's own dtype, clamped to [-128, 127]; dequantize: q * scale. Bit-identical to comfy-kitchen's
eager `quantize_int8_tensorwise` (what current ComfyUI's TensorWiseINT8Layout calls)."""
from __future__ import annotations

import torch


def per_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().abs().amax().float() / 127.0).clamp(min=1e-30)


def quantize(x: torch.Tensor, scale: torch.Tensor | None = None):
    """(int8 tensor, float32 scalar scale)."""
    if scale is None:
        scale = per_tensor_scale(x)
    s = scale.to(x.dtype)
    s = torch.where(s == 0, torch.full_like(s, torch.finfo(x.dtype).tiny), s)  # a scale below x's range
    flat = x.reshape(-1)
    q = torch.empty(flat.shape, dtype=torch.int8, device=x.device)
    step = 1 << 20  # cache-sized chunks, one scratch buffer
    buf = torch.empty(min(step, flat.numel()), dtype=x.dtype, device=x.device)
    for i in range(0, flat.numel(), step):
        chunk = flat[i:i + step]
        t = torch.div(chunk, s, out=buf[: chunk.numel()])
        q[i:i + step] = t.round_().clamp_(-128.0, 127.0)
    return q.view(x.shape), scale.float()


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)
