"""UNet-family checkpoints whose sizes ComfyUI's stock detection does not list.

ComfyUI's `model_config_from_unet` only accepts the exact published configurations (an SDXL with
320 channels and depth [0,0,2,2,10,10], ...). Pruned, distilled or tiny variants with the same
layout but other widths then fail with "Could not detect model type". Here the configuration is
read from the tensors (ComfyUI's own `detect_unet_config`, a VAE and CLIP config read from shapes),
and the model is built from ComfyUI's own classes for the family Modelsmith detected.
"""
from __future__ import annotations

import functools

import torch

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

from ..core import registry
from ..core.families import count_indexed

DEFAULT_VAE = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "z_channels": 4}


def clip_config(hidden, layers, intermediate, *, vocab=49408, positions=77, projection=None, act="quick_gelu"):
    return {"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": intermediate,
            "num_attention_heads": max(1, hidden // 64), "hidden_act": act, "vocab_size": vocab,
            "max_position_embeddings": positions, "projection_dim": projection or hidden,
            "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1}


def clip_config_from_sd(sd: dict, prefix: str, act: str) -> dict:
    """CLIP text config from ComfyUI-internal names (`<prefix>text_model.*`)."""
    emb = sd[prefix + "text_model.embeddings.token_embedding.weight"]
    layers = count_indexed(sd, prefix + "text_model.encoder.layers")
    inter = sd[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    pos = sd[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]
    proj = sd.get(prefix + "text_projection.weight")
    return clip_config(emb.shape[1], layers, inter, vocab=emb.shape[0], positions=pos,
                       projection=proj.shape[0] if proj is not None else None, act=act)


class SizedSDXLClip(comfy.sdxl_clip.SDXLClipModel):
    """ComfyUI's SDXL text encoder pair with CLIP-L/CLIP-G sizes read from the file."""

    def __init__(self, device="cpu", dtype=None, model_options={}, l_config=None, g_config=None):
        torch.nn.Module.__init__(self)
        self.clip_l = comfy.sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                 layer_norm_hidden_state=False, model_options=model_options,
                                                 textmodel_json_config=l_config)
        self.clip_g = comfy.sd1_clip.SDClipModel(device=device, layer="hidden", layer_idx=-2, dtype=dtype,
                                                 textmodel_json_config=g_config,
                                                 special_tokens={"start": 49406, "end": 49407, "pad": 0},
                                                 layer_norm_hidden_state=False, return_projected_pooled=True,
                                                 model_options={**model_options, "model_name": "clip_g"})
        self.dtypes = {dtype}


def can_build(family: str) -> bool:
    """Whether this module builds a whole checkpoint of `family` (denoiser, sized CLIP and VAE)."""
    return clip_target_for(family) is not None


def clip_target_for(family: str, l_config=None, g_config=None):
    if family == "sd1":
        return comfy.supported_models_base.ClipTarget(
            comfy.sd1_clip.SD1Tokenizer,
            functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=functools.partial(
                comfy.sd1_clip.SDClipModel, return_projected_pooled=False, textmodel_json_config=l_config)))
    if family == "sdxl":
        return comfy.supported_models_base.ClipTarget(
            comfy.sdxl_clip.SDXLTokenizer, functools.partial(SizedSDXLClip, l_config=l_config, g_config=g_config))
    return None


def vae_config_from_sd(vae_sd: dict) -> dict:
    conv_out = vae_sd["decoder.conv_out.weight"]
    ch = conv_out.shape[1]
    ups = count_indexed(vae_sd, "decoder.up")
    mult = [vae_sd[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(ups)]
    nrb = count_indexed(vae_sd, "decoder.up.0.block") - 1
    z = vae_sd["decoder.conv_in.weight"].shape[1]
    return {"ch": ch, "ch_mult": mult, "num_res_blocks": nrb, "z_channels": z}


def make_vae(vae_sd: dict, config: dict | None = None) -> comfy.sd.VAE:
    """A ComfyUI VAE; the stock path for the standard SD VAE, a sized AutoencoderKL otherwise."""
    if "decoder.conv_out.weight" not in vae_sd or "decoder.conv_in.weight" not in vae_sd:
        return comfy.sd.VAE(sd=vae_sd)
    config = config or vae_config_from_sd(vae_sd)
    if all(config[k] == DEFAULT_VAE[k] for k in DEFAULT_VAE):
        return comfy.sd.VAE(sd=vae_sd)
    dd = {"double_z": True, "z_channels": config["z_channels"], "resolution": 256, "in_channels": 3, "out_ch": 3,
          "ch": config["ch"], "ch_mult": list(config["ch_mult"]), "num_res_blocks": config["num_res_blocks"],
          "attn_resolutions": [], "dropout": 0.0}
    embed = vae_sd["post_quant_conv.weight"].shape[1] if "post_quant_conv.weight" in vae_sd else config["z_channels"]
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": dd, "embed_dim": embed}})
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(config["ch_mult"]) - 1)
    return vae


def build_model(family: str, unet_config: dict, sd: dict | None = None, prefix="model.diffusion_model.",
                dtype=None, device="cpu"):
    """A ModelPatcher for a UNet family from an explicit config (weights from sd when given)."""
    cls = getattr(comfy.supported_models, registry.get(family).config_classes[0])
    model_config = cls(dict(unet_config))
    load_device = comfy.model_management.get_torch_device()
    params = sum(v.numel() for k, v in (sd or {}).items() if k.startswith(prefix))
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(model_params=params, supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(sd or {}, prefix, device=device)
    if sd is not None:
        model.load_model_weights(sd, prefix)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=comfy.model_management.unet_offload_device()), model_config


def build_clip(family: str, clip_sd: dict, l_config=None, g_config=None, embedding_directory=None):
    """A ComfyUI CLIP from ComfyUI-internal names (`clip_l.transformer.*`, `clip_g.transformer.*`)."""
    if l_config is None and "clip_l.transformer.text_model.embeddings.token_embedding.weight" in clip_sd:
        l_config = clip_config_from_sd(clip_sd, "clip_l.transformer.", "quick_gelu")
    if family == "sdxl" and g_config is None and "clip_g.transformer.text_model.embeddings.token_embedding.weight" in clip_sd:
        g_config = clip_config_from_sd(clip_sd, "clip_g.transformer.", "gelu")
    target = clip_target_for(family, l_config, g_config)
    if target is None:
        return None
    params = sum(v.numel() for v in clip_sd.values())
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, tokenizer_data=clip_sd, parameters=params)
    if clip_sd:
        clip.load_sd(clip_sd, full_model=True)
    return clip


def load_unet_checkpoint(sd: dict, family: str, *, output_vae=True, output_clip=True, embedding_directory=None,
                         prefix="model.diffusion_model."):
    """(model, clip, vae) for a UNet-family single-file checkpoint of any width."""
    unet_config = comfy.model_detection.detect_unet_config(sd, prefix)
    if unet_config is None:
        return None
    patcher, model_config = build_model(family, unet_config, sd, prefix)
    vae = clip = None
    if output_vae:
        vae_sd = comfy.utils.state_dict_prefix_replace(sd, {k: "" for k in model_config.vae_key_prefix}, filter_keys=True)
        vae_sd = model_config.process_vae_state_dict(vae_sd)
        if vae_sd:
            vae = make_vae(vae_sd)
    if output_clip:
        clip_sd = model_config.process_clip_state_dict(sd)
        if clip_sd:
            clip = build_clip(family, clip_sd, embedding_directory=embedding_directory)
    return patcher, clip, vae
