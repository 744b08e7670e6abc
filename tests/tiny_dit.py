"""Tiny denoisers of the DiT families ComfyUI 0.3.75 can instantiate, built from its own classes
(real key names, small widths, random weights), and tiny SD2/refiner UNets."""
from __future__ import annotations

import torch

import tiny


def _sd(module, prefix="", seed=0):
    tiny.randomize(module, seed)
    return {prefix + k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _ops():
    import comfy.ops
    return dict(operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)


def flux(guidance=True, flux2=False):
    from comfy.ldm.flux.model import Flux
    kw = dict(in_channels=128 if flux2 else 16, out_channels=128 if flux2 else 16, vec_in_dim=32, context_in_dim=32,
              hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
              theta=10000, patch_size=1 if flux2 else 2, qkv_bias=not flux2, guidance_embed=guidance)
    if flux2:
        kw.update(global_modulation=True, mlp_silu_act=True, ops_bias=False)
    import dataclasses
    from comfy.ldm.flux.model import FluxParams
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
        kw["txt_ids_dims"] = []  # current ComfyUI: which text-id axes carry positions (none for Flux.1/2 here)
    return _sd(Flux(**kw, **_ops()))


def sd3(medium35=False):
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    kw = dict(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=2, adm_in_channels=64,
              context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
              pos_embed_max_size=16, num_patches=256)
    if medium35:
        kw.update(qk_norm="rms", x_block_self_attn=True, x_block_self_attn_layers=[0])
    return _sd(MMDiT(**kw, **_ops()))


def cosmos(adapter=False):
    from comfy.ldm.cosmos.predict2 import MiniTrainDIT
    m = MiniTrainDIT(max_img_h=64, max_img_w=64, max_frames=1, in_channels=16, out_channels=16, patch_spatial=2,
                     patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=2, num_heads=2,
                     crossattn_emb_channels=32, pos_emb_cls="rope3d", use_adaln_lora=True, adaln_lora_dim=16,
                     **_ops())
    return _sd(m, "net.")


def lumina2():
    from comfy.ldm.lumina.model import NextDiT
    m = NextDiT(patch_size=2, in_channels=16, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                multiple_of=16, ffn_dim_multiplier=1.0, qk_norm=True, cap_feat_dim=32, axes_dims=[8, 12, 12],
                axes_lens=[1, 64, 64], **_ops())
    return _sd(m)


def qwen_image():
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    m = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32,
                                    num_attention_heads=2, joint_attention_dim=64, axes_dims_rope=(8, 12, 12), **_ops())
    return _sd(m)


def unet(family):
    from modelsmith.compat import sized
    cfg = dict(tiny.SD1_UNET)
    if family == "sd2":
        cfg.update(use_linear_in_transformer=True, context_dim=1024, num_head_channels=64, model_channels=64)
        cfg.pop("num_heads")
    elif family == "sdxl-refiner":
        cfg = dict(tiny.SDXL_UNET, adm_in_channels=2560, context_dim=64, channel_mult=[1, 2, 4, 4],
                   num_res_blocks=[2, 2, 2, 2], transformer_depth=[0, 0, 1, 1, 1, 1, 0, 0],
                   transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    p, _ = sized.build_model(family, cfg, dtype=torch.float32)
    return _sd(p.model.diffusion_model, "model.diffusion_model.")


# name -> (builder, expected family, variant, layout, prediction)
TINY_DIT = {
    "flux1_dev": (lambda: flux(True), "flux1", "dev", "diffusion-model", "flow"),
    "flux1_schnell": (lambda: flux(False), "flux1", "schnell", "diffusion-model", "flow"),
    "flux2": (lambda: flux(True, flux2=True), "flux2", None, "diffusion-model", "flow"),
    "sd3": (lambda: sd3(), "sd3", None, "diffusion-model", "flow"),
    "sd35_medium": (lambda: sd3(True), "sd3.5-medium", None, "diffusion-model", "flow"),
    "cosmos_predict2": (lambda: cosmos(), "cosmos-predict2", None, "diffusion-model", "flow"),
    "lumina2": (lambda: lumina2(), "lumina2", None, "diffusion-model", "flow"),
    "qwen_image": (lambda: qwen_image(), "qwen-image", None, "diffusion-model", "flow"),
    "sd2_unet": (lambda: unet("sd2"), "sd2", None, "checkpoint", "eps"),
    "sdxl_refiner_unet": (lambda: unet("sdxl-refiner"), "sdxl-refiner", None, "checkpoint", "eps"),
}
