"""Noise-schedule and guidance formulas (reference.md section 3), in torch, without ComfyUI.

These are the definitions the sampler nodes are tested against."""
from __future__ import annotations

ZTSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08


def sd_alphas_cumprod(timesteps=1000, linear_start=0.00085, linear_end=0.012, dtype=None):
    """The SD/SDXL 'scaled linear' schedule: betas linear in sqrt space."""
    import torch
    dtype = dtype or torch.float64
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=dtype) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ztsnr_alphas_cumprod(alphas_cumprod):
    """Zero terminal SNR (Lin et al. 2023): shift/scale sqrt(alphas_cumprod) so the last is 0 and the
    first unchanged; the last value is then clamped to 4.8973451890853435e-08 to keep sigma finite."""
    s = alphas_cumprod.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * s0 / (s0 - sT)
    out = s ** 2
    out[-1] = ZTSNR_LAST_ALPHA_CUMPROD
    return out


def sigmas_from_alphas_cumprod(alphas_cumprod):
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def rescale_cfg(x_cfg, x_cond, phi: float):
    """CFG rescale: phi * x_cfg * std(x_cond)/std(x_cfg) + (1 - phi) * x_cfg, std per sample."""
    import torch
    dims = tuple(range(1, x_cfg.ndim))
    ro_pos = torch.std(x_cond, dim=dims, keepdim=True)
    ro_cfg = torch.std(x_cfg, dim=dims, keepdim=True)
    return phi * (x_cfg * (ro_pos / ro_cfg)) + (1.0 - phi) * x_cfg
