"""Tiny SDXL-shaped and Anima denoisers in bf16 for the precision tests and benchmark, and one
denoiser call with fixed random inputs."""
from __future__ import annotations

import torch

import tiny
import tiny_anima


def sdxl_bf16(seed=2):
    from modelsmith.compat import sized
    patcher, _ = sized.build_model("sdxl", tiny.SDXL_UNET, dtype=torch.float32)
    tiny.randomize(patcher.model.diffusion_model, seed)
    sd = {"model.diffusion_model." + k: v for k, v in patcher.model.diffusion_model.state_dict().items()}
    bf16, _ = sized.build_model("sdxl", tiny.SDXL_UNET, sd=sd, dtype=torch.bfloat16)
    return bf16


def anima_bf16(seed=0, blocks=2):
    from modelsmith.compat.anima import load_anima_model
    return load_anima_model(tiny_anima.dit_state_dict(seed=seed, blocks=blocks), dtype=torch.bfloat16)


def inputs(family, seed=7):
    g = torch.Generator().manual_seed(seed)
    if family == "sdxl":
        x = torch.randn(1, 4, 32, 32, generator=g)
        ctx = torch.randn(1, 77, tiny.L_HIDDEN + tiny.G_HIDDEN, generator=g)
        y = torch.randn(1, tiny.SDXL_UNET["adm_in_channels"], generator=g)
        return x, torch.tensor([5.0]), {"c_crossattn": ctx, "y": y}
    x = torch.randn(1, 16, 1, 32, 32, generator=g)
    ctx = torch.randn(1, 24, 32, generator=g)
    return x, torch.tensor([0.6]), {"c_crossattn": ctx}


def denoise(patcher, family, seed=7):
    """The denoiser output for fixed inputs, computed through ComfyUI's BaseModel.apply_model."""
    import comfy.model_management
    comfy.model_management.load_models_gpu([patcher])
    x, sigma, conds = inputs(family, seed)
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, **conds).float()


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))
