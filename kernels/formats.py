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


# ComfyUI's quantized format: the tensors that belong to a quantized layer besides its weight
SCALE_SUFFIXES = (".comfy_quant", ".weight_scale", ".weight_scale_2", ".input_scale", ".scale_weight", ".scale_input")
# the `comfy_quant` / `_quantization_metadata` format names that mean 8-bit float weights
FP8_FORMATS = {"float8_e4m3fn", "float8_e5m2", "fp8_e4m3fn", "fp8_e5m2", "float8_e4m3fn_scaled"}
