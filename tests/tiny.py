"""Tiny checkpoints with real key names, built from ComfyUI's own classes and saved through
ComfyUI's own save path, so every name and shape is what a real file of that layout holds.

SD1-shaped: 4 levels, transformer depth [1,1,1,1,1,1,0,0], CLIP-L text encoder, SD VAE layout.
SDXL-shaped: 3 levels, depth [0,0,1,1,1,1], label_emb (pooled + 6x256 size embeddings),
CLIP-L + OpenCLIP-G text encoders, SD VAE layout. All widths small so CPU sampling takes moments.
"""
from __future__ import annotations

import torch

L_HIDDEN, G_HIDDEN = 32, 64
TINY_VAE = {"ch": 32, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "z_channels": 4}

BASE = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "in_channels": 4, "model_channels": 32, "use_temporal_attention": False,
        "use_temporal_resblock": False}
SD1_UNET = {**BASE, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": L_HIDDEN, "num_heads": 8}
SDXL_UNET = {**BASE, "num_classes": "sequential", "adm_in_channels": G_HIDDEN + 6 * 256, "num_res_blocks": [2, 2, 2],
             "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 1, 1, 1, 1],
             "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
             "use_linear_in_transformer": True, "context_dim": L_HIDDEN + G_HIDDEN, "num_head_channels": 64}


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0 or p.numel() == 0:
                continue
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            elif p.ndim == 1:
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.01)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def build(family: str, seed: int = 0):
    """(model patcher, clip, vae) of a tiny model of `family` ('sd1' or 'sdxl') with random weights."""
    from modelsmith.compat import sized
    unet = {"sd1": SD1_UNET, "sdxl": SDXL_UNET}[family]
    patcher, _ = sized.build_model(family, unet, dtype=torch.float32)
    randomize(patcher.model.diffusion_model, seed)
    l_cfg = sized.clip_config(L_HIDDEN, 3, 64, act="quick_gelu")
    g_cfg = sized.clip_config(G_HIDDEN, 3, 128, act="gelu") if family == "sdxl" else None
    clip = sized.build_clip(family, {}, l_config=l_cfg, g_config=g_cfg)
    randomize(clip.cond_stage_model, seed + 1)
    vae = _tiny_vae(seed + 2)
    return patcher, clip, vae


def _tiny_vae(seed):
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from modelsmith.compat import sized
    dd = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": TINY_VAE["ch"],
          "ch_mult": TINY_VAE["ch_mult"], "num_res_blocks": TINY_VAE["num_res_blocks"], "attn_resolutions": [], "dropout": 0.0}
    ae = AutoencoderKL(ddconfig=dd, embed_dim=4)
    randomize(ae, seed)
    return sized.make_vae(ae.state_dict())


def save(path, family: str, seed: int = 0, markers=(), metadata=None, drop_vae=False):
    """Write a tiny checkpoint through ComfyUI's save_checkpoint; markers: 'v_pred', 'ztsnr'."""
    import comfy.sd
    model, clip, vae = build(family, seed)
    extra = {m: torch.tensor([]) for m in markers}
    comfy.sd.save_checkpoint(str(path), model, clip, None if drop_vae else vae, metadata=metadata, extra_keys=extra)
    return path
