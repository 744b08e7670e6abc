"""Precision nodes: a VAE decode that never returns NaN, and quantized saving of model files."""
from __future__ import annotations

import folder_paths
import torch

from ..core.errors import ModelsmithError
from ..core.quantize import run_quantize
from .model_tools import DESTINATIONS, _progress_bar, output_path

DECODE_DTYPES = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def decode_without_nan(vae, samples, dtype=None):
    """Decode in `dtype` (or the VAE's own); on NaN/inf retry in bf16, then fp32. -> (image, report)."""
    original = vae.vae_dtype
    first = dtype or original
    tried, report = [], []
    try:
        for dt in [first] + [d for d in (torch.bfloat16, torch.float32) if d != first]:
            vae.first_stage_model.to(dt)
            vae.vae_dtype = dt
            image = vae.decode(samples)
            tried.append(dt)
            if torch.isfinite(image).all():
                name = str(dt).replace("torch.", "")
                report.append(f"decoded in {name}" + (f" after NaN/inf in {', '.join(str(t).replace('torch.', '') for t in tried[:-1])}"
                                                        if len(tried) > 1 else ""))
                return image, "; ".join(report)
        raise ModelsmithError("the VAE gives NaN/inf in every dtype (fp16, bf16, fp32): the latent or the VAE file is broken")
    finally:
        vae.first_stage_model.to(original)
        vae.vae_dtype = original


class ModelsmithVAEDecode:
    DESCRIPTION = ("Decodes in the chosen dtype and checks the image: on NaN/inf (the SDXL-VAE-in-fp16 trap) it "
                   "retries in bf16, then fp32, and reports what it did.")
    CATEGORY = "modelsmith/precision"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("IMAGE", "report")
    FUNCTION = "decode"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",),
                             "dtype": (list(DECODE_DTYPES), {"default": "auto", "tooltip": "auto: the VAE's current dtype."})}}

    def decode(self, samples, vae, dtype="auto"):
        image, report = decode_without_nan(vae, samples["samples"], DECODE_DTYPES[dtype])
        if image.ndim == 5:
            image = image.reshape(-1, *image.shape[-3:])
        return {"ui": {"text": [report]}, "result": (image, report)}


class ModelsmithSaveQuantized:
    DESCRIPTION = ("Quantizes a model file to fp8 (scaled) or nvfp4 in ComfyUI's native format (per-layer comfy_quant "
                   "plus the _quantization_metadata header), keeping sensitive layers by family preset; streaming.")
    CATEGORY = "modelsmith/precision"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        files = [f"diffusion_models/{n}" for n in folder_paths.get_filename_list("diffusion_models")] + \
                [f"checkpoints/{n}" for n in folder_paths.get_filename_list("checkpoints")]
        return {"required": {
            "model_file": (files or ["(no model files found)"],),
            "format": (["fp8", "nvfp4"], {"default": "fp8", "tooltip": "nvfp4 files need a current ComfyUI."}),
            "preset": (["auto", "anima", "sdxl", "none"], {"default": "auto"}),
            "exclude": ("STRING", {"default": "", "tooltip": "More layers to keep in high precision (comma-separated regex)."}),
            "output_name": ("STRING", {"default": "quantized"}),
            "destination": (DESTINATIONS, {"default": "output/checkpoints"}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }}

    def save(self, model_file, format, preset, exclude, output_name, destination, overwrite):
        folder, _, name = model_file.partition("/")
        src = folder_paths.get_full_path_or_raise(folder, name)
        out = output_path(output_name, destination, overwrite=overwrite)
        stats = run_quantize(src, out, fmt=format, preset=preset, exclude=exclude, overwrite=overwrite,
                             progress=_progress_bar())
        text = (f"wrote {out}: {stats['quantized_layers']} layers in {format}, "
                f"{stats['bytes_per_param']:.3f} bytes/param (preset {stats['preset']})")
        return {"ui": {"text": [text]}, "result": (out,)}


NODE_CLASS_MAPPINGS = {"ModelsmithVAEDecode": ModelsmithVAEDecode, "ModelsmithSaveQuantized": ModelsmithSaveQuantized}
NODE_DISPLAY_NAME_MAPPINGS = {"ModelsmithVAEDecode": "VAE Decode, Never NaN (Modelsmith)",
                              "ModelsmithSaveQuantized": "Save Quantized fp8 / nvfp4 (Modelsmith)"}
