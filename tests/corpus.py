"""Header-only full-size files (sparse) with real names and shapes for every family of the
inspection contract. UNet families come from ComfyUI's own classes on the meta device (names of the
checkpoint, diffusion-model and diffusers layouts); DiT families from the key signatures of
reference.md section 2 with their real block counts and widths."""
from __future__ import annotations

import torch

from modelsmith.core.safetensors_io import write_sparse

ST = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3"}

UNET_CONFIGS = {
    "sd1": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
            "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
            "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
            "use_temporal_resblock": False},
    "sdxl": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
             "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
             "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
             "use_temporal_resblock": False},
    "sdxl-refiner": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                     "legacy": False, "num_classes": "sequential", "adm_in_channels": 2560, "in_channels": 4,
                     "model_channels": 384, "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0],
                     "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 4, "use_linear_in_transformer": True,
                     "context_dim": 1280, "num_head_channels": 64,
                     "transformer_depth_output": [0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0], "use_temporal_attention": False,
                     "use_temporal_resblock": False},
}
UNET_CONFIGS["sd2"] = {**UNET_CONFIGS["sd1"], "use_linear_in_transformer": True, "context_dim": 1024,
                       "num_head_channels": 64}
UNET_CONFIGS["sd2"].pop("num_heads")


def unet_table(family: str, in_channels=4, dtype=torch.float16):
    """{name: (dtype, shape)} of the denoiser (no prefix), from ComfyUI's UNetModel on meta."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops
    cfg = dict(UNET_CONFIGS[family], in_channels=in_channels)
    with torch.device("meta"):
        m = UNetModel(**cfg, operations=comfy.ops.disable_weight_init, device="meta")
    return {k: (ST[dtype], tuple(v.shape)) for k, v in m.state_dict().items()}


def vae_table(dtype=torch.float16):
    from comfy.ldm.models.autoencoder import AutoencoderKL
    dd = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        m = AutoencoderKL(ddconfig=dd, embed_dim=4)
    return {k: (ST[dtype], tuple(v.shape)) for k, v in m.state_dict().items()}


def clip_table(hidden, layers, inter, prefix, dtype=torch.float16, openclip=False, projection=None):
    t = {}
    if openclip:
        t[prefix + "token_embedding.weight"] = (49408, hidden)
        t[prefix + "positional_embedding"] = (77, hidden)
        t[prefix + "ln_final.weight"] = (hidden,)
        t[prefix + "ln_final.bias"] = (hidden,)
        if projection:
            t[prefix + "text_projection"] = (hidden, projection)
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            t.update({b + "attn.in_proj_weight": (3 * hidden, hidden), b + "attn.in_proj_bias": (3 * hidden,),
                      b + "attn.out_proj.weight": (hidden, hidden), b + "attn.out_proj.bias": (hidden,),
                      b + "ln_1.weight": (hidden,), b + "ln_1.bias": (hidden,), b + "ln_2.weight": (hidden,),
                      b + "ln_2.bias": (hidden,), b + "mlp.c_fc.weight": (inter, hidden), b + "mlp.c_fc.bias": (inter,),
                      b + "mlp.c_proj.weight": (hidden, inter), b + "mlp.c_proj.bias": (hidden,)})
    else:
        p = prefix + "text_model."
        t[p + "embeddings.token_embedding.weight"] = (49408, hidden)
        t[p + "embeddings.position_embedding.weight"] = (77, hidden)
        t[p + "final_layer_norm.weight"] = (hidden,)
        t[p + "final_layer_norm.bias"] = (hidden,)
        for i in range(layers):
            b = f"{p}encoder.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                t[b + f"self_attn.{n}.weight"] = (hidden, hidden)
                t[b + f"self_attn.{n}.bias"] = (hidden,)
            t.update({b + "layer_norm1.weight": (hidden,), b + "layer_norm1.bias": (hidden,),
                      b + "layer_norm2.weight": (hidden,), b + "layer_norm2.bias": (hidden,),
                      b + "mlp.fc1.weight": (inter, hidden), b + "mlp.fc1.bias": (inter,),
                      b + "mlp.fc2.weight": (hidden, inter), b + "mlp.fc2.bias": (hidden,)})
    return {k: (ST[dtype], v) for k, v in t.items()}


def sd_checkpoint(family, in_channels=4, dtype=torch.float16, vae=True, te=True, markers=(), ema=False):
    t = {"model.diffusion_model." + k: v for k, v in unet_table(family, in_channels, dtype).items()}
    if vae:
        t.update({"first_stage_model." + k: v for k, v in vae_table(dtype).items()})
    if te:
        if family == "sd1":
            t.update(clip_table(768, 12, 3072, "cond_stage_model.transformer.", dtype))
        elif family == "sd2":
            t.update(clip_table(1024, 24, 4096, "cond_stage_model.model.", dtype, openclip=True))
        elif family == "sdxl":
            t.update(clip_table(768, 12, 3072, "conditioner.embedders.0.transformer.", dtype))
            t.update(clip_table(1280, 32, 5120, "conditioner.embedders.1.model.", dtype, openclip=True, projection=1280))
        elif family == "sdxl-refiner":
            t.update(clip_table(1280, 32, 5120, "conditioner.embedders.0.model.", dtype, openclip=True, projection=1280))
    if ema:
        for k, v in list(t.items()):
            if k.startswith("model.diffusion_model."):
                t["model_ema." + k[len("model."):].replace(".", "")] = ("F32", v[1])
        t["model_ema.decay"] = ("F32", ())
        t["model_ema.num_updates"] = ("I32", ())
    for m in markers:
        t[m] = ("F32", (0,))
    return t


def diffusers_unet(family, dtype=torch.float16):
    import comfy.utils
    cfg = dict(UNET_CONFIGS[family])
    cfg["num_res_blocks"] = cfg["num_res_blocks"]
    mapping = comfy.utils.unet_to_diffusers(cfg)  # diffusers name -> ldm name
    ldm = unet_table(family, 4, dtype)
    out = {}
    for dk, lk in mapping.items():
        if lk in ldm:
            out[dk] = ldm[lk]
    return out


def _blocks(n, template, width, prefix=""):
    t = {}
    for i in range(n):
        for name, shape in template(width).items():
            t[f"{prefix}{i}.{name}"] = shape
    return t


def dit_tables():
    """family id -> (table, expected fields), DiT families from reference.md section 2."""
    bf = "BF16"

    def sd3(depth, qk_norm=False, mmditx=False):
        h = depth * 64
        t = {"x_embedder.proj.weight": (h, 16, 2, 2), "pos_embed": (1, 36864, h), "context_embedder.weight": (h, 4096),
             "final_layer.linear.weight": (64, h)}
        for i in range(depth):
            for side in ("context_block", "x_block"):
                t[f"joint_blocks.{i}.{side}.attn.qkv.weight"] = (3 * h, h)
                t[f"joint_blocks.{i}.{side}.mlp.fc1.weight"] = (4 * h, h)
                if qk_norm:
                    t[f"joint_blocks.{i}.{side}.attn.ln_q.weight"] = (64,)
            if mmditx and i < 13:
                t[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = (3 * h, h)
        return {"model.diffusion_model." + k: (bf, v) for k, v in t.items()}

    def flux1(guidance, norm="scale"):
        h = 3072
        t = {"img_in.weight": (h, 64), "txt_in.weight": (h, 4096), "time_in.in_layer.weight": (h, 256),
             "final_layer.linear.weight": (64, h)}
        if guidance:
            t["guidance_in.in_layer.weight"] = (h, 256)
        for i in range(19):
            t[f"double_blocks.{i}.img_attn.qkv.weight"] = (3 * h, h)
            t[f"double_blocks.{i}.img_attn.norm.key_norm.{norm}"] = (128,)
            t[f"double_blocks.{i}.img_mlp.0.weight"] = (4 * h, h)
        for i in range(38):
            t[f"single_blocks.{i}.linear1.weight"] = (21504, h)
        return {k: (bf, v) for k, v in t.items()}

    def flux2(h, nd, ns):
        t = {"img_in.weight": (h, 128), "double_stream_modulation_img.lin.weight": (6 * h, h),
             "double_stream_modulation_txt.lin.weight": (6 * h, h), "single_stream_modulation.lin.weight": (3 * h, h)}
        for i in range(nd):
            t[f"double_blocks.{i}.img_attn.qkv.weight"] = (3 * h, h)
            t[f"double_blocks.{i}.img_attn.norm.key_norm.scale"] = (128,)
        for i in range(ns):
            t[f"single_blocks.{i}.linear1.weight"] = (9 * h, h)
        return {k: (bf, v) for k, v in t.items()}

    def qwen():
        t = {"img_in.weight": (3072, 64), "txt_norm.weight": (3584,), "txt_in.weight": (3072, 3584)}
        for i in range(60):
            t[f"transformer_blocks.{i}.attn.to_q.weight"] = (3072, 3072)
            t[f"transformer_blocks.{i}.img_mlp.net.0.proj.weight"] = (12288, 3072)
        return {k: (bf, v) for k, v in t.items()}

    def lumina(dim, layers):
        t = {"cap_embedder.1.weight": (dim, 2304 if dim == 2304 else 2560), "x_embedder.weight": (dim, 64)}
        for i in range(2):
            t[f"noise_refiner.{i}.attention.k_norm.weight"] = (128,)
            t[f"noise_refiner.{i}.attention.qkv.weight"] = (3 * dim, dim)
        for i in range(layers):
            t[f"layers.{i}.attention.qkv.weight"] = (3 * dim, dim)
        return {"model.diffusion_model." + k: (bf, v) for k, v in t.items()}

    def cosmos(width, blocks, adapter=False, prefix="net.", source=1024):
        t = {"x_embedder.proj.1.weight": (width, 68), "t_embedder.1.linear_1.weight": (width, width),
             "final_layer.linear.weight": (64, width), "pos_embedder.dim_spatial_range": (0,)}
        for i in range(blocks):
            t[f"blocks.{i}.mlp.layer1.weight"] = (4 * width, width)
            t[f"blocks.{i}.self_attn.q_proj.weight"] = (width, width)
            t[f"blocks.{i}.cross_attn.k_proj.weight"] = (width, 1024)
            t[f"blocks.{i}.adaln_modulation_self_attn.1.weight"] = (256, width)
        if adapter:
            t["llm_adapter.embed.weight"] = (32128, 1024)
            for i in range(6):
                t[f"llm_adapter.blocks.{i}.cross_attn.q_proj.weight"] = (1024, 1024)
                t[f"llm_adapter.blocks.{i}.cross_attn.k_proj.weight"] = (1024, source)
                t[f"llm_adapter.blocks.{i}.self_attn.q_proj.weight"] = (1024, 1024)
                t[f"llm_adapter.blocks.{i}.mlp.0.weight"] = (4096, 1024)
        return {prefix + k: (bf, v) for k, v in t.items()}

    def exp(family, variant=None, layout="diffusion-model", prediction="flow", precision="bf16"):
        return dict(family=family, variant=variant, layout=layout, prediction=prediction, precision=precision)

    return {
        "sd3_medium": (sd3(24), exp("sd3", layout="checkpoint")),
        "sd35_large": (sd3(38, qk_norm=True), exp("sd3.5-large", layout="checkpoint")),
        "sd35_medium": (sd3(24, qk_norm=True, mmditx=True), exp("sd3.5-medium", layout="checkpoint")),
        "flux1_dev": (flux1(True), exp("flux1", "dev")),
        "flux1_schnell": (flux1(False), exp("flux1", "schnell")),
        # as current ComfyUI (0.29) saves Flux.1: the q/k norm gains named `.weight`, not `.scale`
        "flux1_dev_norm_weight": (flux1(True, "weight"), exp("flux1", "dev")),
        "flux2_dev": (flux2(6144, 8, 48), exp("flux2", "dev")),
        "flux2_klein4b": (flux2(3072, 5, 20), exp("flux2", "klein-4b")),
        "flux2_klein9b": (flux2(4096, 8, 24), exp("flux2", "klein-9b")),
        "qwen_image": (qwen(), exp("qwen-image")),
        "lumina2": (lumina(2304, 26), exp("lumina2", layout="checkpoint")),
        "z_image": (lumina(3840, 30), exp("z-image", layout="checkpoint")),
        "cosmos_2b": (cosmos(2048, 28), exp("cosmos-predict2", "2b")),
        "cosmos_14b": (cosmos(5120, 36), exp("cosmos-predict2", "14b")),
        "anima": (cosmos(2048, 28, adapter=True), exp("anima", "2b")),
        "anima_tune_32_blocks": (cosmos(2048, 32, adapter=True), exp("anima", "32-block")),
        "anima_2_9b": (cosmos(2048, 40, adapter=True), exp("anima", "2.9b")),
        "anima_3_8b": (cosmos(2048, 52, adapter=True, source=2560), exp("anima", "3.8b")),
    }


def write(path, table, metadata=None):
    return write_sparse(path, table, metadata)
