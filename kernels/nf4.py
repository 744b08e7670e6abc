"""NF4 (bitsandbytes 4-bit NormalFloat) dequantization, for reading bitsandbytes-quantized files.

A bitsandbytes `Linear4bit` weight is stored as:
  <layer>.weight                                     uint8, two 4-bit codes per byte, first in the high nibble,
                                                     over the row-major flattened weight
  <layer>.weight.absmax                              one scale per `blocksize` values (fp32, or uint8 when nested)
  <layer>.weight.quant_map                           the 16-value code (the NF4 table of reference.md section 5)
  <layer>.weight.nested_absmax / .nested_quant_map   when the absmax values are themselves 8-bit
                                                     quantized: absmax = nested_quant_map[byte] *
                                                     nested_absmax[i // nested_blocksize] + nested_offset
  <layer>.weight.quant_state.bitsandbytes__nf4       uint8 UTF-8 JSON: quant_type, blocksize, dtype, shape,
                                                     nested_blocksize, nested_dtype, nested_offset
value = quant_map[code] * absmax[index // blocksize]; the last block may be partial."""
from __future__ import annotations

import json

import torch

from .formats import NF4_STATE

NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_state(raw: torch.Tensor) -> dict:
    try:
        state = json.loads(bytes(raw.to(torch.uint8).flatten().tolist()).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable bitsandbytes quant state: {e}") from e
    if state.get("quant_type") != "nf4":
        raise ValueError(f"bitsandbytes quant type {state.get('quant_type')!r} is not supported (only nf4)")
    return state


def dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = 64, code=None,
               dtype=torch.bfloat16) -> torch.Tensor:
    """Blockwise NF4 -> `dtype` tensor of `shape` (absmax already in float)."""
    n = 1
    for s in shape:
        n *= int(s)
    flat = packed.reshape(-1).to(torch.uint8)
    if flat.numel() * 2 < n:
        raise ValueError(f"NF4 data holds {flat.numel() * 2} values, the shape {tuple(shape)} needs {n}")
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=-1).reshape(-1)[:n].long()
    table = torch.tensor(NF4_CODE if code is None else code, dtype=torch.float32, device=packed.device)
    values = table[codes]
    blocks = -(-n // blocksize)
    if absmax.numel() < blocks:
        raise ValueError(f"NF4 absmax has {absmax.numel()} blocks, {blocks} needed")
    scale = absmax.float().reshape(-1)[:blocks].repeat_interleave(blocksize)[:n]
    return (values * scale).reshape(tuple(shape)).to(dtype)


def dequantize_layer(get, weight_key: str, dtype=None, state: dict | None = None) -> torch.Tensor:
    """Dequantize one bitsandbytes layer; `get(key)` returns a stored tensor (`state`: its quant state,
    when already read)."""
    if state is None:
        state = read_state(get(weight_key + NF4_STATE))
    absmax = get(weight_key + ".absmax")
    if "nested_blocksize" in state:
        nested_map = get(weight_key + ".nested_quant_map").float()
        nested_absmax = get(weight_key + ".nested_absmax").float().reshape(-1)
        idx = absmax.reshape(-1).to(torch.uint8).long()
        nb = int(state["nested_blocksize"])
        scale = nested_absmax.repeat_interleave(nb)[: idx.numel()]
        absmax = nested_map[idx] * scale + float(state.get("nested_offset", 0.0))
    code = get(weight_key + ".quant_map").float().tolist()
    out_dtype = dtype or DTYPES.get(state.get("dtype"), torch.bfloat16)
    return dequantize(get(weight_key), absmax, state["shape"], int(state.get("blocksize", 64)), code, out_dtype)
