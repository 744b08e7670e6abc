"""A tiny Anima: the three files with real key names (net.* + llm_adapter.*, model.* Qwen3, Wan VAE)."""
from __future__ import annotations

import safetensors.torch
import torch

import tiny

LLM = {"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}


# core's native Anima builds its LLM adapter at fixed sizes (the registry's Anima record: 1024 wide, 6 blocks)
NATIVE_ADAPTER = __import__("modelsmith.core.registry", fromlist=["get"]).get("anima").core_native["adapter"]


def dit_state_dict(seed=0, blocks=2, adapter=None, dtype=torch.float32):
    """A tiny Anima DiT (64 wide); `adapter=NATIVE_ADAPTER` gives it an adapter core's native Anima can
    hold (135 M parameters, the rest stays tiny)."""
    import comfy.ops
    from modelsmith.compat.anima import AnimaDiT
    adapter = adapter or {"dim": 32, "source_dim": 64, "layers": 2, "heads": 1}
    m = AnimaDiT(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                 patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=blocks, num_heads=2,
                 crossattn_emb_channels=adapter["dim"], pos_emb_cls="rope3d", use_adaln_lora=True, adaln_lora_dim=16,
                 rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_enable_fps_modulation=False,
                 adapter=adapter, operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)
    tiny.randomize(m, seed)
    return {"net." + k: v.detach().to(dtype).contiguous() for k, v in m.state_dict().items()}


def te_state_dict(seed=1, hidden=None, dtype=torch.float32):
    """A tiny Qwen3 (2 layers); `hidden=1024` makes it as wide as the real 0.6B, which core's fixed
    Anima adapter reads (the full 151936-token vocabulary makes that one 155 M parameters)."""
    import comfy.ops
    from modelsmith.compat.qwen3 import Qwen3Small
    cfg = dict(LLM, hidden_size=hidden) if hidden else LLM
    m = Qwen3Small(cfg, dtype, "cpu", comfy.ops.disable_weight_init)
    tiny.randomize(m, seed)
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def vae_state_dict(seed=2):
    from comfy.ldm.wan.vae import WanVAE
    m = WanVAE(dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])
    tiny.randomize(m, seed)
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def save(models_dir, blocks=2):
    paths = {"dit": models_dir / "diffusion_models" / "anima-tiny.safetensors",
             "te": models_dir / "text_encoders" / "qwen_3_06b_base.safetensors",
             "vae": models_dir / "vae" / "qwen_image_vae.safetensors"}
    safetensors.torch.save_file(dit_state_dict(blocks=blocks), str(paths["dit"]))
    safetensors.torch.save_file(te_state_dict(), str(paths["te"]))
    safetensors.torch.save_file(vae_state_dict(), str(paths["vae"]))
    return paths
