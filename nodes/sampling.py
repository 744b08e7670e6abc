"""Sampler nodes with the recommended defaults: SDXL eps, v-prediction and zero terminal SNR."""
from __future__ import annotations

import comfy.model_management
import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's own nodes.py (common_ksampler)
import torch

from ..compat.family import family_of
from ..core import registry, resolution
from ..core.errors import a
from ..core.schedules import rescale_cfg
from . import common
from .sampling_patch import apply_prediction, sampling_of

PREDICTIONS = ["auto", "eps", "v", "v+ztsnr"]


_REC = registry.settings("sdxl")  # the widgets' defaults: SDXL's record


def default_cfg(label: str) -> float:
    """The recommended CFG of SDXL for a prediction label (eps, v, v+ztsnr), from its registry record."""
    return registry.settings("sdxl", prediction="v" if label.startswith("v") else "eps")["cfg"]
ZTSNR_MAX_CFG = 7.0


def with_rescale_cfg(model, phi: float):
    """A clone of `model` with CFG rescale (the same v-space math as ComfyUI's RescaleCFG node)."""
    def cfg_function(args):
        cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
        x_orig = args["input"]
        sigma = args["sigma"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        x = x_orig / (sigma * sigma + 1.0)
        v_cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        v_uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        v_cfg = v_uncond + scale * (v_cond - v_uncond)
        v_final = rescale_cfg(v_cfg, v_cond, phi)
        return x_orig - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg_function)
    return m


def resolve(model, settings, choice):
    """(prediction label, warnings) for the sampler's prediction choice."""
    warnings = []
    if settings:
        file_label = "v+ztsnr" if settings.get("prediction") == "v" and settings.get("ztsnr") else settings.get("prediction")
    else:
        pred, z = sampling_of(model)
        file_label = "v+ztsnr" if pred == "v" and z else pred
    if choice == "auto":
        label = file_label if file_label in ("eps", "v", "v+ztsnr") else "eps"
    else:
        label = choice
        if settings and settings.get("file_prediction") is not None:
            marked = "v+ztsnr" if settings.get("file_prediction") == "v" and settings.get("file_ztsnr") else settings.get("file_prediction")
        else:  # no SETTINGS wired: the model's own sampling (its loader read the markers) says it
            marked = file_label
        if marked in ("eps", "v", "v+ztsnr") and marked != label:
            warnings.append(f"prediction {label} contradicts the model's own ({marked}, from its markers): expect "
                            f"noise, gray or black images if the file is right.")
    return label, warnings


class ModelsmithSDXLSampler:
    DESCRIPTION = ("Samples SDXL eps, v-prediction and v-prediction + zero terminal SNR models with the right "
                   "schedule, CFG and CFG rescale; no yaml files.")
    CATEGORY = "modelsmith/sampling"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("LATENT", "IMAGE")
    FUNCTION = "sample"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "prediction": (PREDICTIONS, {"default": "auto", "tooltip":
                           "auto: from SETTINGS or the model's current sampling (markers). v+ztsnr applies zero terminal SNR."}),
            "size": (resolution.preset_labels(resolution.SDXL_PRESETS), {"default": "1:1 (1024x1024)",
                     "tooltip": "SDXL training buckets (~1 MP); 'custom' uses width/height."}),
            "width": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64, "tooltip": "Used when size is custom."}),
            "height": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64, "tooltip": "Used when size is custom."}),
            "steps": ("INT", {"default": _REC["steps"], "min": 1, "max": 200, "tooltip": f"~{_REC['steps']} for SDXL."}),
            "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                    f"0 = recommended for the prediction (eps {default_cfg('eps'):g}, v and v+ztsnr {default_cfg('v'):g})."}),
            "cfg_rescale": (["auto", "on", "off"], {"default": "auto", "tooltip":
                            "auto: on for v-prediction with ZTSNR."}),
            "rescale_phi": ("FLOAT", {"default": registry.settings("sdxl", prediction="v")["cfg_rescale"], "min": 0.0,
                                      "max": 1.0, "step": 0.01}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": _REC["sampler"]}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": _REC["scheduler"]}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }, "optional": {
            "settings": (common.SETTINGS, {"tooltip": "From the Modelsmith checkpoint loader."}),
            "vae": ("VAE", {"tooltip": "Connect to get the decoded IMAGE."}),
            "latent_image": ("LATENT", {"tooltip": "For img2img (with denoise < 1); otherwise an empty latent of the chosen size."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run (ignored with a latent_image)."}),
        }, "hidden": common.HIDDEN_GRAPH}

    def sample(self, model, positive, negative, prediction, size, width, height, steps, cfg, cfg_rescale, rescale_phi,
               sampler_name, scheduler, seed, denoise, settings=None, vae=None, latent_image=None, batch_size=1,
               prompt=None, unique_id=None):
        common.check_vae_for_image(vae, prompt, unique_id, 1, "SDXL Sampler")
        common.check_conditioning(positive, "positive", prompt, unique_id)
        common.check_conditioning(negative, "negative", prompt, unique_id)
        label, warnings = resolve(model, settings, prediction)
        pred, ztsnr = ("v", True) if label == "v+ztsnr" else (label, False)
        current = sampling_of(model)
        if current != (pred, ztsnr):
            model = apply_prediction(model, pred, ztsnr)
        family = family_of(model)[0]
        rec = registry.get(family)
        if rec is None or rec.pack_sampler != "ModelsmithSDXLSampler":
            warnings.append(f"this is {a(family)} model, not SDXL: the sizes, CFG and schedule here are SDXL's; "
                            f"core's KSampler with the model's own settings fits it better.")
        if cfg <= 0:
            cfg = default_cfg(label)
            warnings.append(f"cfg 0 means the recommended CFG for {label}: ran at {cfg:g}.")
        if ztsnr and cfg > ZTSNR_MAX_CFG:
            warnings.append(f"CFG {cfg} is far above what zero terminal SNR tolerates (<= 5): expect burnt colors.")
        if cfg_rescale == "on" or (cfg_rescale == "auto" and ztsnr):
            model = with_rescale_cfg(model, rescale_phi)
        if latent_image is not None:
            warnings.append("a latent_image is connected: size, width, height and batch_size are not used.")
        elif size != "custom" and (width, height) != resolution.preset_size(size, resolution.SDXL_PRESETS, (width, height)):
            warnings.append(f"size {size}: the width/height widgets ({width}x{height}) are not used (choose size "
                            f"custom to use them).")
        if latent_image is None:
            w, h = resolution.preset_size(size, resolution.SDXL_PRESETS, resolution.snap(width, height, registry.get("sdxl").size_multiple))
            latent_image = {"samples": torch.zeros([batch_size, 4, h // 8, w // 8],
                                                   device=comfy.model_management.intermediate_device())}
        (latent,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise=denoise)
        image = vae.decode(latent["samples"]) if vae is not None else None
        if image is not None and image.ndim == 5:
            image = image.reshape(-1, *image.shape[-3:])
        text = f"prediction {label}, cfg {cfg:g}, rescale {'on' if model.model_options.get('sampler_cfg_function') else 'off'}"
        return {"ui": {"text": [text] + warnings}, "result": (latent, image)}


NODE_CLASS_MAPPINGS = {"ModelsmithSDXLSampler": ModelsmithSDXLSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"ModelsmithSDXLSampler": "SDXL Sampler: eps / v-pred / ZTSNR (Modelsmith)"}
