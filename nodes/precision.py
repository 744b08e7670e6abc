"""Precision nodes: model compute dtype and runtime fp8/nvfp4 weights, a VAE decode that never
returns NaN, and quantized saving of model files."""
from __future__ import annotations

import folder_paths
import torch

from ..core.errors import ModelsmithError
from ..core import registry
from ..core.quantize import FORMATS as QUANT_FILE_FORMATS, run_quantize
from ..core.inspect import inspect_file
from ..kernels.qlinear import FORMATS as PACK_LAYER_FORMATS
from .common import model_file_choices, resolve_model
from .model_tools import DESTINATIONS, _progress_bar, output_path

QUANT_DESTINATIONS = ["auto", "models/diffusion_models", *DESTINATIONS]

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
        if vae is None:
            raise ModelsmithError("VAE Decode: no VAE came in (the checkpoint has none?): connect a VAELoader's VAE")
        image, report = decode_without_nan(vae, samples["samples"], DECODE_DTYPES[dtype])
        if image.ndim == 5:
            image = image.reshape(-1, *image.shape[-3:])
        return {"ui": {"text": [report]}, "result": (image, report)}


_QUANT_FOLDERS = ("diffusion_models", "checkpoints")


class ModelsmithSaveQuantized:
    DESCRIPTION = ("Quantizes a model file to fp8 (e4m3 or e5m2, scaled), int8, mxfp8 or nvfp4 in ComfyUI's native format (per-layer comfy_quant "
                   "plus the _quantization_metadata header), keeping sensitive layers by family preset; streaming.")
    CATEGORY = "modelsmith/precision"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_file": (model_file_choices(_QUANT_FOLDERS),),
            "format": ([*QUANT_FILE_FORMATS, "mixed"], {"default": "fp8", "tooltip":
                       "fp8 (e4m3) loads in every ComfyUI; fp8_e5m2, int8 (int8_tensorwise, for GPUs without fp8), "
                       "mxfp8 and nvfp4 need ComfyUI >= 0.29. mixed: per layer one of `candidates`, chosen by "
                       "measured output error within max_error or max_gb. Every layer is checked after writing."}),
            "preset": (["auto", *registry.quantize_presets(), "none"], {"default": "auto", "tooltip":
                       "Layers kept in high precision: a family's (auto: the file's own family), or none."}),
            "exclude": ("STRING", {"default": "", "tooltip": "More layers to keep in high precision (comma-separated regex)."}),
            "output_name": ("STRING", {"default": "quantized"}),
            "destination": (QUANT_DESTINATIONS, {"default": "auto", "tooltip":
                            "auto: where a loader lists the result: a diffusion-model file goes to "
                            "models/diffusion_models (Load Diffusion Model), a checkpoint to models/checkpoints "
                            "(Load Checkpoint)."}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }, "optional": {
            "max_error": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip":
                          "mixed: per layer the smallest candidate whose relative output error is within this "
                          "(0: use max_gb)."}),
            "max_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.1, "tooltip":
                       "mixed: the lowest measured error within this file size in GB (used when max_error is 0)."}),
            "candidates": ("STRING", {"default": "nvfp4,fp8", "tooltip":
                           "mixed: the formats a layer may take, comma-separated (fp8, fp8_e5m2, int8, mxfp8, nvfp4)."}),
            "model": ("MODEL", {"tooltip": "The same file loaded (with calibration): errors are measured on the "
                                "inputs its layers see while denoising the calibration prompt, not random ones."}),
            "calibration": ("CONDITIONING", {"tooltip": "A prompt's conditioning for the model input: a few "
                            "denoiser calls on it give each layer's real inputs."}),
        }}

    def save(self, model_file, format, preset, exclude, output_name, destination, overwrite, max_error=0.0,
             max_gb=0.0, candidates="nvfp4,fp8", model=None, calibration=None):
        from ..core.qplan import format_report
        budget = {}
        if (model is None) != (calibration is None):
            raise ModelsmithError("calibration needs both the model (this file, loaded) and a prompt's conditioning")
        if format == "mixed":
            if max_error > 0:
                budget["max_error"] = max_error
            elif max_gb > 0:
                budget["max_bytes"] = max_gb * 1e9
            else:
                raise ModelsmithError("mixed needs a budget: set max_error (e.g. 0.03) or max_gb")
            budget["candidates"] = [c.strip() for c in candidates.split(",") if c.strip()]
        src = resolve_model(model_file, _QUANT_FOLDERS)
        if model is not None:  # each layer's real inputs on a few denoiser calls of the calibration prompt
            from ..compat.quantized import calibration_inputs
            budget["activations"] = calibration_inputs(model, calibration)
        if destination == "auto":
            layout = inspect_file(src).get("layout")
            destination = "models/diffusion_models" if layout == "diffusion-model" else "models/checkpoints"
        out = output_path(output_name, destination, overwrite=overwrite)
        stats = run_quantize(src, out, fmt="fp8" if format == "mixed" else format, preset=preset, exclude=exclude,
                             overwrite=overwrite, progress=_progress_bar(), **budget)
        text = (f"wrote {out}: {stats['quantized_layers']} layers in {format}, "
                f"{stats['bytes_per_param']:.3f} bytes/param (preset {stats['preset']}); "
                f"{stats['verified_layers']} layers checked against the plan after writing\n"
                f"quality: {format_report(stats['quality'])}")
        return {"ui": {"text": [text]}, "result": (out,)}


COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANT_DTYPES = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "nvfp4": "nvfp4",
                "int8_tensorwise": "int8_tensorwise", "mxfp8": "mxfp8"}
# run by core's quantized layers only, not the pack's own (offered where the running core has them)
CORE_ONLY = tuple(f for f in QUANT_DTYPES.values() if f not in PACK_LAYER_FORMATS)


def _quant_dtype_choices() -> list[str]:
    import comfy.model_management
    from ..compat.quantized import core_quant_ops
    device = comfy.model_management.get_torch_device()
    return [k for k, f in QUANT_DTYPES.items() if f not in CORE_ONLY or core_quant_ops(f, device) is not None]
QUANT_BACKENDS = ("auto", "comfyui", "modelsmith")  # whose quantized layers (compat.quantized.quantized_patcher)


def _fp16_accumulation_wrapper(previous=None):
    """A denoiser wrapper that turns cuBLAS fp16 accumulation on around the call (restoring the global
    flag afterwards) and calls the wrapper already set on the model, if any."""
    def wrapper(apply_model, args):
        flag = torch.backends.cuda.matmul
        before = getattr(flag, "allow_fp16_accumulation", False)
        flag.allow_fp16_accumulation = True
        try:
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            flag.allow_fp16_accumulation = before
    return wrapper


def fp16_accumulation_support(device) -> str | None:
    """None when fp16 accumulation can be used on `device`, else why not."""
    if torch.device(device).type != "cuda":
        return f"fp16 accumulation needs a CUDA GPU; this model runs on {device}, so it was left off"
    if not hasattr(torch.backends.cuda.matmul, "allow_fp16_accumulation"):
        return f"fp16 accumulation needs torch >= 2.7 (this is {torch.__version__}); left off"
    return None


def _core_has_model_compute_dtype() -> bool:
    import nodes as comfy_nodes
    return "ModelComputeDtype" in getattr(comfy_nodes, "NODE_CLASS_MAPPINGS", {})


class ModelsmithModelComputeDtype:
    DESCRIPTION = ("Sets how the denoiser computes. fp32/fp16/bf16 set the compute dtype (fp16 on Anima keeps the "
                   "residual stream in fp32, so it does not overflow). fp8_e4m3fn/fp8_e5m2/nvfp4 quantize the linear "
                   "weights of a copy of the model (scaled, per-family preset of sensitive layers kept in high "
                   "precision, plus `exclude`), computing with native kernels where the GPU has them and "
                   "dequantize-then-matmul elsewhere; LoRAs still apply. auto leaves ComfyUI's choice.")
    CATEGORY = "modelsmith/precision"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("MODEL", "report")
    FUNCTION = "apply"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "dtype": (["auto", *COMPUTE_DTYPES, *_quant_dtype_choices()], {"default": "auto"}),
            "preset": (["auto", *registry.quantize_presets(), "none"], {
                "default": "auto", "tooltip": "Layers kept in high precision for fp8/nvfp4: a family's layers "
                                              "(auto: the model's own family), or none."}),
            "exclude": ("STRING", {"default": "", "tooltip": "More layers to keep in high precision for fp8/nvfp4 "
                                                             "(comma-separated regular expressions on layer names)."}),
            "fp16_accumulation": ("BOOLEAN", {"default": False, "tooltip": "cuBLAS fp16 accumulation in matmuls "
                                                                          "(faster on CUDA, torch >= 2.7)."}),
        }, "optional": {
            "calibration": ("CONDITIONING", {"tooltip": "A prompt's conditioning: with a quantized dtype, the report "
                            "gives the denoiser's output error against the unquantized model at three noise "
                            "levels on a calibration latent."}),
            "backend": (list(QUANT_BACKENDS), {"default": "auto", "tooltip":
                        "Whose quantized layers fp8/nvfp4 use. auto: ComfyUI's own (comfy-kitchen quantized tensors, "
                        "as for core-loaded quantized files) where this ComfyUI has them, else Modelsmith's. "
                        "modelsmith: always the pack's layers (any ComfyUI)."}),
        }}

    def apply(self, model, dtype="auto", preset="auto", exclude="", fp16_accumulation=False, backend="auto",
              calibration=None):
        from ..compat.family import family_of
        from ..compat.quantized import quantized_patcher
        lines = []
        if dtype in QUANT_DTYPES:
            try:
                m, st = quantized_patcher(model, QUANT_DTYPES[dtype], preset=preset, exclude=exclude,
                                          backend=backend)
            except ValueError as e:
                raise ModelsmithError(str(e)) from e
            lines.append(f"{dtype}: {st['quantized_layers']} linear layers quantized "
                         f"({st['quantized_params']:,} params, {st['bytes_per_param']:.4f} bytes/param, "
                         f"{st['source_bytes'] / 2**20:.1f} -> {st['quantized_bytes'] / 2**20:.1f} MiB); "
                         f"{st['kept_layers']} kept in high precision (preset {st['preset']}"
                         f"{', exclude' if exclude.strip() else ''}); compute: {st['compute']}")
            if calibration is not None:
                from ..compat.quantized import denoiser_errors
                errs = denoiser_errors(model, m, calibration)
                lines.append("denoiser output error vs unquantized on a calibration latent: " +
                             ", ".join(f"sigma {s_:.3g}: {e:.4f}" for s_, e in errs))
        else:
            m = model.clone()
            if dtype in COMPUTE_DTYPES:
                m.set_model_compute_dtype(COMPUTE_DTYPES[dtype])
                note = ""
                rec = registry.get(family_of(model)[0])
                if dtype == "fp16" and rec and rec.fp16_overflow:
                    dit = model.model.diffusion_model
                    note = (f" ({rec.label}: residual stream kept in fp32 by Modelsmith)"
                            if getattr(dit, "modelsmith_fp32_residual", False) else f" ({rec.label}: ComfyUI's own fp16 handling)")
                if _core_has_model_compute_dtype():
                    note += " (what core Model Compute Dtype does, which this ComfyUI has)"
                lines.append(f"compute dtype {dtype}{note}")
            else:
                current = getattr(model.model, "manual_cast_dtype", None) or model.model.get_dtype()
                lines.append(f"auto: ComfyUI's choice kept ({str(current).replace('torch.', '')})")
        if fp16_accumulation:
            why_not = fp16_accumulation_support(model.load_device)
            if why_not:
                lines.append(why_not)
            else:
                m.set_model_unet_function_wrapper(_fp16_accumulation_wrapper(m.model_options.get("model_function_wrapper")))
                lines.append("fp16 accumulation on while the denoiser runs")
        report = "; ".join(lines)
        return {"ui": {"text": [report]}, "result": (m, report)}


NODE_CLASS_MAPPINGS = {"ModelsmithModelComputeDtype": ModelsmithModelComputeDtype,
                       "ModelsmithVAEDecode": ModelsmithVAEDecode, "ModelsmithSaveQuantized": ModelsmithSaveQuantized}
NODE_DISPLAY_NAME_MAPPINGS = {"ModelsmithModelComputeDtype": "Model Compute Dtype fp32/fp16/bf16/fp8/nvfp4 (Modelsmith)",
                              "ModelsmithVAEDecode": "VAE Decode, Never NaN (Modelsmith)",
                              "ModelsmithSaveQuantized": "Save Quantized fp8 / int8 / nvfp4 (Modelsmith)"}
