"""A linear layer holding scaled-fp8 or NVFP4 weights, with the hooks ComfyUI's ModelPatcher uses.

Storage per layer: `weight` (fp8 [N, K], or NVFP4 packed uint8 [N, K/2]), `weight_scale` (fp32
scalar for fp8; E4M3 block scales [N, K/16] kept row-major for nvfp4, so the layer costs exactly
0.5625 bytes per parameter; the blocked layout is made on demand for native kernels),
`weight_scale_2` (nvfp4's fp32 per-tensor scale) and `bias` (unquantized).

Compute, chosen per call from the input's device:
- fp8: `torch._scaled_mm` on CUDA SM >= 8.9 (activations scaled per tensor to e4m3);
- nvfp4: comfy-kitchen's `scaled_mm_nvfp4` on CUDA SM >= 10 when its CUDA backend is present;
- else on CUDA the Triton dequant-matmul kernels of `triton_linear`;
- else (CPU) dequantize to the input's dtype, then `F.linear`.

LoRA and other weight patches: ModelPatcher looks up `convert_weight` / `set_weight` on the module
owning a patched key. `convert_weight` turns the stored (or fp32-cast) weight into fp32 values;
`set_weight` quantizes the patched result back with the layer's existing scales, so a backed-up
`weight` restores the unpatched layer exactly. In low-VRAM mode ComfyUI appends weight functions;
`forward` applies their patches to the dequantized weight and requantizes the same way.

This module does not import ComfyUI.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from . import fp8 as k_fp8
from . import nvfp4 as k_nvfp4
from . import triton_linear

FORMATS = ("float8_e4m3fn", "float8_e5m2", "nvfp4")
FP8_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
_warned = set()


def _capability(device: torch.device):
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def native_fp8(device) -> bool:
    return _native(torch.device(device), "fp8")


def native_nvfp4(device) -> bool:
    return _native(torch.device(device), "nvfp4")


@functools.lru_cache(maxsize=None)
def _native(device: torch.device, fmt: str) -> bool:
    """Asked on every forward: answered once per device and format."""
    cap = _capability(device)
    if fmt == "fp8":
        return cap is not None and cap >= (8, 9) and hasattr(torch, "_scaled_mm")
    if cap is None or cap < (10, 0):
        return False
    try:
        import comfy_kitchen as ck
        info = ck.list_backends().get("cuda") if hasattr(ck, "list_backends") else None
        return bool(info and info.get("available") and "scaled_mm_nvfp4" in info.get("capabilities", ()))
    except Exception:
        return False


def compute_path(fmt: str, device) -> str:
    """Which kernel a layer of `fmt` uses for inputs on `device` (for reports and tests)."""
    device = torch.device(device)
    if fmt in FP8_DTYPES and native_fp8(device):
        return "native fp8 (torch._scaled_mm)"
    if fmt == "nvfp4" and native_nvfp4(device):
        return "native nvfp4 (comfy-kitchen scaled_mm_nvfp4)"
    if device.type == "cuda" and triton_linear.available(device):
        return "Triton dequant-matmul"
    return "dequantize then matmul (torch)"


class QuantLinear(torch.nn.Module):
    # the runtime's LoRA math, (patches, fp32 weight, key) -> weight; set by compat/quantized.py
    calculate_weight = None

    def __init__(self, fmt: str, weight: torch.Tensor, scale: torch.Tensor, scale_2: torch.Tensor | None,
                 bias: torch.Tensor | None, in_features: int, out_features: int):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown quantized format {fmt!r}; one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_scale_2", scale_2)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        # the attributes ComfyUI's ModelPatcher uses for low-VRAM loading and lazy patches
        self.comfy_cast_weights = False
        self.weight_function = []
        self.bias_function = []

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, fmt: str) -> "QuantLinear":
        w = linear.weight.detach()
        if w.ndim != 2:
            raise ValueError("only 2-D linear weights are quantized")
        if fmt == "nvfp4" and w.shape[1] % k_nvfp4.BLOCK:
            raise ValueError(f"nvfp4 needs in_features divisible by {k_nvfp4.BLOCK} (got {w.shape[1]})")
        if fmt in FP8_DTYPES:
            q, s = k_fp8.quantize(w, dtype=FP8_DTYPES[fmt], precise=True)
            s2 = None
        else:
            q, blocked, s2 = k_nvfp4.quantize(w)
            # clone: a contiguous slice of the padded blocked tensor would keep the padding alive
            s = k_nvfp4.from_blocked(blocked, w.shape[0], w.shape[1] // k_nvfp4.BLOCK).clone(memory_format=torch.contiguous_format)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(fmt, q, s.reshape(()) if fmt in FP8_DTYPES else s, s2, bias, w.shape[1], w.shape[0])

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.fmt}"

    def quantized_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.weight_scale, self.weight_scale_2)
                   if t is not None)

    # -- ModelPatcher hooks -------------------------------------------------------------------
    def _raw(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored form of `weight`, which may arrive cast to fp32 by the patcher."""

        if self.fmt == "nvfp4":
            return weight if weight.dtype == torch.uint8 else weight.round().to(torch.uint8)
        return weight

    def dequantize(self, weight: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        w = self.weight if weight is None else self._raw(weight)
        if self.fmt == "nvfp4":
            return k_nvfp4.dequantize_rows(w, self.weight_scale.to(w.device), self.weight_scale_2.to(w.device), dtype)
        return w.to(dtype) * self.weight_scale.to(device=w.device, dtype=dtype)

    def convert_weight(self, weight, inplace=False, **kwargs):
        return self.dequantize(weight, torch.float32)

    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        w = weight.float()
        if self.fmt == "nvfp4":
            q = k_nvfp4.encode_with_scales(w, self.weight_scale.to(w.device), self.weight_scale_2.to(w.device))
        else:
            q, _ = k_fp8.quantize(w, scale=self.weight_scale.to(w.device), dtype=FP8_DTYPES[self.fmt], precise=True)
        if return_weight:
            return q
        if inplace_update:
            self.weight.data.copy_(q)
        else:
            self.weight = torch.nn.Parameter(q.to(self.weight.device), requires_grad=False)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        w = self.weight if self.weight.device == dev else self.weight.to(dev, non_blocking=True)
        if self.weight_function:
            w = self._patched(w)
        bias = self.bias
        if bias is not None:
            bias = bias.to(device=dev, dtype=x.dtype)
            for f in self.bias_function:
                bias = f(bias)
        if dev.type == "cuda":
            try:
                return self._forward_cuda(x, w, bias)
            except Exception as e:  # a kernel that cannot take this shape: say so once, then compute exactly
                key = (self.fmt, type(e).__name__)
                if key not in _warned:
                    _warned.add(key)
                    logging.warning("Modelsmith: %s kernel failed (%s); using dequantize+matmul", self.fmt, e)
        return F.linear(x, self.dequantize(w, x.dtype), bias)

    def _patched(self, w: torch.Tensor) -> torch.Tensor:
        """Apply low-VRAM weight functions to the stored weight: dequantize to fp32, add each patch,
        requantize with the layer's scales (the same result a full load's merge gives).

        ComfyUI's LowVramPatch objects carry `patches` and `key`; their own __call__ differs between
        versions (0.3.x converts through convert_weight/set_weight, later ones expect an already
        dequantized weight), so the patches are applied here through the runtime's LoRA math, which
        compat/quantized.py hands to the class (`calculate_weight`; kernels never import ComfyUI).
        Other weight functions get the dequantized weight, as ComfyUI's own layers give it to them."""
        wd = self.dequantize(w, torch.float32)
        for f in self.weight_function:
            patches, key = getattr(f, "patches", None), getattr(f, "key", None)
            if patches is not None and key is not None:
                if self.calculate_weight is None:
                    raise RuntimeError("QuantLinear got LoRA patches but no calculate_weight (set by compat/quantized.py)")
                prepared = getattr(f, "prepared_patches", None)
                wd = self.calculate_weight(prepared if prepared is not None else patches[key], wd, key)
            else:
                wd = f(wd).float()
        return self.set_weight(wd, return_weight=True)

    def _forward_cuda(self, x, w, bias):
        scale = self.weight_scale.to(x.device)
        K, N = self.in_features, self.out_features
        if self.fmt in FP8_DTYPES and native_fp8(x.device) and K % 16 == 0 and N % 16 == 0:
            x2 = x.reshape(-1, K)
            xs = (x2.abs().amax().float() / k_fp8.FP8_MAX[torch.float8_e4m3fn]).clamp(min=1e-12)
            xq = (x2 / xs.to(x2.dtype)).clamp(-448, 448).to(torch.float8_e4m3fn)
            out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.bfloat16
            y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=scale.float().reshape(()), out_dtype=out_dtype)
            if isinstance(y, tuple):  # torch < 2.5 also returned the output's amax
                y = y[0]
            y = y.to(x.dtype)
            y = y.reshape(*x.shape[:-1], N)
            return y + bias if bias is not None else y
        if self.fmt == "nvfp4" and native_nvfp4(x.device):
            import comfy_kitchen as ck
            x2 = x.reshape(-1, K)
            xs = k_nvfp4.global_scale(x2).to(x.device)
            xq, xblock = ck.quantize_nvfp4(x2, xs, pad_16x=True)
            wblock = getattr(self, "_blocked", None)
            if wblock is None or wblock.device != x.device:
                wblock = self._blocked = k_nvfp4.to_blocked(scale)
            y = ck.scaled_mm_nvfp4(xq, w, xs, self.weight_scale_2.to(x.device), xblock, wblock,
                                   bias=bias, out_dtype=x.dtype)
            return y[: x2.shape[0], :N].reshape(*x.shape[:-1], N)
        if triton_linear.available(x.device):
            if self.fmt == "nvfp4":
                return triton_linear.nvfp4_linear(x, w, scale, self.weight_scale_2.to(x.device), bias)
            return triton_linear.fp8_linear(x, w, scale, bias)
        return F.linear(x, self.dequantize(w, x.dtype), bias)
