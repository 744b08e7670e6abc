"""NVFP4: E2M1 values (two per byte, first element in the high nibble), one E4M3 scale per 16
consecutive elements of a row stored in cuBLAS's blocked (swizzled) layout, and one fp32 scale per
tensor (amax / (448 * 6), as ComfyUI writes it). value = e2m1 * e4m3 * fp32.

The torch reference here is bit-identical to comfy-kitchen's eager backend (its format is what
ComfyUI reads); E2M1 rounding is round-to-nearest-even by exact power-of-two scaling per binade
(e2m1_codes), checked against the plain midpoint search (e2m1_codes_search)."""
from __future__ import annotations

import torch

E2M1_MAX, E4M3_MAX, BLOCK = 6.0, 448.0, 16
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# midpoints between neighbouring E2M1 magnitudes; a value exactly on one rounds to the even code
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_cache = {}


def _const(name, values, device, dtype):
    key = (name, device, dtype)
    if key not in _cache:
        _cache[key] = torch.tensor(values, device=device, dtype=dtype)
    return _cache[key]


def global_scale(x: torch.Tensor) -> torch.Tensor:
    """The per-tensor fp32 scale ComfyUI uses: amax / (448 * 6); 1 for an all-zero tensor (0 would
    turn every block scale into 0/0)."""
    scale = x.detach().abs().amax().float() / (E4M3_MAX * E2M1_MAX)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def e2m1_codes_search(x: torch.Tensor) -> torch.Tensor:
    """E2M1 codes by searching the midpoints (the plain definition; e2m1_codes is the fast twin)."""
    mags = x.abs()
    mid = _const("mid", _MIDPOINTS, x.device, torch.float32)
    code = torch.bucketize(mags, mid)  # number of midpoints strictly below
    on_mid = mid[code.clamp(max=len(_MIDPOINTS) - 1)] == mags
    code = code + (on_mid & (code % 2 == 1)).to(code.dtype)
    return code.to(torch.uint8) | (torch.signbit(x).to(torch.uint8) << 3)


_SIX = 0x40C00000  # float32 bits of 6.0


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes (uint8, sign in bit 3) of float32 values, round half to even, saturating at 6.

    The E2M1 grid has step 0.5 below 2, 1 in [2, 4) and 2 in [4, 6]; so with k = the binade
    clamped to 0..2 (from the float32 exponent bits), code = round_half_even(|x| / 2^(k-1)) + 2k.
    Dividing by a power of two is exact, so the rounding is the one rounding of the true value.
    Magnitudes are clamped to 6 on the integer bit patterns first, which also sends inf and NaN to
    6 (code 7), as the bit-pattern definition does."""
    bits = x.contiguous().view(torch.int32)
    a = bits & 0x7FFFFFFF
    a.clamp_(max=_SIX)
    k = a >> 23
    k.sub_(127).clamp_(0, 2)
    step = (k + 126) << 23  # 2^(k-1) as float32 bits
    q = a.view(torch.float32) / step.view(torch.float32)
    q.round_()
    code = q.to(torch.int32)
    code += k << 1
    code |= (bits >> 28) & 8  # the sign bit, moved to bit 3
    return code.to(torch.uint8)


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """(rows, cols) scales -> cuBLAS block-scaling layout: padded to (128k, 4m), then each 128x4 tile
    stored as 32 rows of 16 (row r of the tile goes to row r % 32, column group r // 32)."""
    rows, cols = scales.shape
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    if (pr, pc) != (rows, cols):
        padded = torch.zeros((pr, pc), dtype=scales.dtype, device=scales.device)
        padded[:rows, :cols] = scales
        scales = padded
    tiles = scales.view(pr // 128, 128, pc // 4, 4).permute(0, 2, 1, 3)      # (R, C, 128, 4)
    tiles = tiles.reshape(-1, 4, 32, 4).transpose(1, 2)                     # (R*C, 32, 4, 4)
    return tiles.reshape(pr, pc)


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    pr, pc = blocked.shape
    tiles = blocked.reshape(-1, 32, 4, 4).transpose(1, 2).reshape(pr // 128, pc // 4, 128, 4)
    return tiles.permute(0, 2, 1, 3).reshape(pr, pc)[:rows, :cols]


def quantize(x: torch.Tensor, per_tensor: torch.Tensor | None = None, pad_16x: bool = False):
    """(packed uint8 [rows, cols/2], blocked E4M3 scales, fp32 per-tensor scale) of a 2-D tensor."""
    if x.ndim != 2:
        raise ValueError("nvfp4 quantizes 2-D weights")
    if per_tensor is None:
        per_tensor = global_scale(x)
    rows, cols = x.shape
    if pad_16x and (rows % 16 or cols % 16):
        x = torch.nn.functional.pad(x, (0, -cols % 16, 0, -rows % 16))
        rows, cols = x.shape
    if cols % BLOCK:
        raise ValueError(f"nvfp4 needs a multiple of {BLOCK} columns (got {cols}); use pad_16x")
    scale8 = torch.empty((rows, cols // BLOCK), dtype=torch.float8_e4m3fn, device=x.device)
    packed = torch.empty((rows, cols // 2), dtype=torch.uint8, device=x.device)
    # row chunks of ~256 K values keep every intermediate in cache; each pass is then cheap
    step = max(1, (1 << 17) // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        blocks = x[r0:r1].reshape(r1 - r0, cols // BLOCK, BLOCK)
        block_scale = blocks.abs().amax(dim=-1).float() / E2M1_MAX
        s8 = (block_scale / per_tensor).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
        scale8[r0:r1] = s8
        packed[r0:r1] = _encode(blocks, s8, per_tensor)
    return packed, to_blocked(scale8), per_tensor.float()


def _encode(blocks: torch.Tensor, s8: torch.Tensor, per_tensor: torch.Tensor) -> torch.Tensor:
    """Packed codes of blocks [rows, cols/16, 16] under given E4M3 block scales [rows, cols/16]."""
    rows = blocks.shape[0]
    total = per_tensor * s8.float()
    zero = total == 0
    data = blocks.float() / torch.where(zero, torch.ones_like(total), total).unsqueeze(-1)
    codes = e2m1_codes(data)  # saturates at 6 like a clamp to [-6, 6] would
    if zero.any():
        codes.masked_fill_(zero.unsqueeze(-1), 0)  # blocks whose scale is 0 hold +0
    codes = codes.view(-1)
    return (codes[0::2] << 4 | codes[1::2]).view(rows, -1)


def encode_with_scales(x: torch.Tensor, scale_rows: torch.Tensor, per_tensor: torch.Tensor) -> torch.Tensor:
    """Packed data of a 2-D `x` under fixed row-major E4M3 block scales [rows, cols/16] and per-tensor
    scale (values past a block's range saturate). Used to write a patched weight back in place, so a
    backed-up packed tensor stays valid with the scales it was made with."""
    rows, cols = x.shape
    packed = torch.empty((rows, cols // 2), dtype=torch.uint8, device=x.device)
    step = max(1, (1 << 17) // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        packed[r0:r1] = _encode(x[r0:r1].reshape(r1 - r0, cols // BLOCK, BLOCK), scale_rows[r0:r1], per_tensor)
    return packed


def dequantize_rows(packed: torch.Tensor, scale_rows: torch.Tensor, per_tensor: torch.Tensor,
                    dtype=torch.bfloat16) -> torch.Tensor:
    """dequantize() for row-major block scales [rows, cols/16]."""
    rows, half = packed.shape
    cols = half * 2
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(rows, cols)
    lut = _const("lut", E2M1_VALUES + tuple(-v for v in E2M1_VALUES), packed.device, dtype)
    values = lut[codes.long()].reshape(rows, cols // BLOCK, BLOCK)
    total = per_tensor.to(device=packed.device, dtype=dtype) * scale_rows.to(dtype)
    return (values * total.unsqueeze(-1)).reshape(rows, cols).to(dtype)


def dequantize(packed: torch.Tensor, scales: torch.Tensor, per_tensor: torch.Tensor, dtype=torch.bfloat16,
               shape=None) -> torch.Tensor:
    """Back to `dtype` ([rows, 2*packed cols], cropped to `shape` when given)."""
    rows, half = packed.shape
    out = dequantize_rows(packed, from_blocked(scales, rows, half * 2 // BLOCK), per_tensor, dtype)
    if shape is not None:
        out = out[: shape[0], : shape[1]]
    return out
