"""What the keys and bits of the quantized formats in model files mean, torch-free (read by
inspection, conversion, loading and the kernels alike):

- ComfyUI's quantized format: per layer `<layer>.weight` + `<layer>.comfy_quant` (UTF-8 JSON with the
  format) and scales `.weight_scale`, `.weight_scale_2`, `.input_scale`; the legacy scaled-fp8
  format's `.scale_weight` / `.scale_input`;
- bitsandbytes NF4: `<layer>.weight` plus its quant-state tensors.
"""
from __future__ import annotations


# bitsandbytes 4-bit layers: `<layer>.weight` plus these bookkeeping tensors (kernels/nf4.py reads them)
NF4_STATE = ".quant_state.bitsandbytes__nf4"
NF4_AUX = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", NF4_STATE)


def nf4_weights(keys) -> set[str]:
    """The `<layer>.weight` keys that carry a bitsandbytes NF4 quant state."""
    return {k[: -len(NF4_STATE)] for k in keys if k.endswith(NF4_STATE)}


def nf4_aux_keys(weights) -> set[str]:
    """The bookkeeping tensors that belong to the given NF4 weights."""
    return {w + s for w in weights for s in NF4_AUX}


class QuantFormat:
    """One `comfy_quant` format as ComfyUI stores it: what its weight holds (`storage`, safetensors
    dtype; `per_byte` logical weights per stored element), the other tensors of the layer, the kind
    of number it is (`kind`: fp8, fp4, int8, int4) and the oldest of the pack's test runtimes that
    reads it (`comfyui`, for the sentence when the running ComfyUI cannot: whether it can is asked of
    the running core, never decided from this)."""

    __slots__ = ("name", "storage", "per_byte", "aux", "kind", "comfyui")

    def __init__(self, name, storage, per_byte, aux, kind, comfyui):
        self.name, self.storage, self.per_byte, self.aux, self.kind, self.comfyui = name, storage, per_byte, aux, kind, comfyui


_FP8_AUX = (".weight_scale", ".input_scale")
# every format current ComfyUI (0.33: comfy/quant_ops.py QUANT_ALGOS, comfy/ops.py) reads from a file
QUANT_FORMATS = {f.name: f for f in (
    QuantFormat("float8_e4m3fn", "F8_E4M3", 1, _FP8_AUX, "fp8", "0.3.75"),
    QuantFormat("float8_e5m2", "F8_E5M2", 1, _FP8_AUX, "fp8", "0.29"),
    QuantFormat("mxfp8", "F8_E4M3", 1, _FP8_AUX, "fp8", "0.29"),
    QuantFormat("nvfp4", "U8", 2, (".weight_scale", ".weight_scale_2", ".input_scale", ".pre_quant_scale"), "fp4", "0.29"),
    QuantFormat("int8_tensorwise", "I8", 1, (".weight_scale",), "int8", "0.29"),
    QuantFormat("convrot_w4a4", "I8", 2, (".weight_scale",), "int4", "0.29"),
    # int4 codes two per byte (a 6-bit variant stores 3K/4 bytes a row: per_byte is read from the shape)
    QuantFormat("asym_w4a8_int8", "I8", 2, (".weight_s_rel", ".weight_s_channel", ".weight_codebook",
                                            ".weight_correction"), "int4", "0.33"),
)}

# ComfyUI's quantized format: the tensors that belong to a quantized layer besides its weight
SCALE_SUFFIXES = tuple(dict.fromkeys((".comfy_quant", ".scale_weight", ".scale_input")
                                     + tuple(a for f in QUANT_FORMATS.values() for a in f.aux)))
# the `comfy_quant` / `_quantization_metadata` format names that mean 8-bit float weights
FP8_FORMATS = {f.name for f in QUANT_FORMATS.values() if f.kind == "fp8"} | {"fp8_e4m3fn", "fp8_e5m2",
                                                                           "float8_e4m3fn_scaled"}


def logical_columns(fmt: str, stored_cols: int) -> int:
    """Input width of a quantized weight from its stored row width (4-bit formats pack two a byte)."""
    f = QUANT_FORMATS.get(fmt)
    return stored_cols * (f.per_byte if f else 1)


def needs_newer_comfyui(fmt: str) -> str:
    """The sentence for a format the running ComfyUI cannot read."""
    f = QUANT_FORMATS.get(fmt)
    if f is None:
        return f"the quantized format {fmt!r} is unknown to Modelsmith and to the running ComfyUI"
    return (f"its layers are in {fmt}, which the running ComfyUI cannot read: this file needs ComfyUI >= {f.comfyui} "
            f"(with its pinned comfy-kitchen)")
