"""One tiny model per DiT family of the registry, built with the running ComfyUI's own classes, and
loaded back from a file the way core loads it (its config class, its quantized-layer detection, its
`load_model_weights`), then sampled with `comfy.sample`.

Core's detection fixes the widths of several families at their full size (Qwen-Image 3072, Z-Image
3840, Cosmos 2048, Lumina 2 2304), so a tiny file cannot go through detection: the loader here takes
the record's config class (core/registry.py `config_classes[0]`) with the tiny unet_config instead,
and does what `comfy.sd.load_diffusion_model_state_dict` does after detection. Nothing of ComfyUI is
replaced."""
from __future__ import annotations

import inspect

import torch

import tiny

# family -> (unet_config for the config class, latent shape, context (tokens, width), pooled width or None)
SPECS = {
    "flux1": (dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                   hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
                   theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[]),
              (1, 16, 16, 16), (8, 32), 32),
    "flux2": (dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=32,
                   hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 8, 8, 8],
                   theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True, global_modulation=True,
                   mlp_silu_act=True, ops_bias=False, default_ref_method="index", ref_index_scale=10.0,
                   txt_ids_dims=[3]),
              (1, 128, 8, 8), (8, 32), 32),  # a pooled output ComfyUI 0.3.x asks for and FLUX.2 ignores
    "sd3": (dict(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=2,
                 adm_in_channels=64, pos_embed_max_size=16, num_patches=256,
                 context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}}),
            (1, 16, 16, 16), (8, 64), 64),
    "qwen-image": (dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64, axes_dims_rope=(8, 12, 12)),
                   (1, 16, 1, 16, 16), (8, 64), None),
    "lumina2": (dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
                     n_heads=2, n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=1.0, qk_norm=True, cap_feat_dim=32,
                     axes_dims=[8, 12, 12], axes_lens=[300, 64, 64]),
                (1, 16, 16, 16), (8, 32), None),
    # Z-Image's modulation reads a 256-wide time embedding: its width is at least 256
    "z-image": (dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=2, n_refiner_layers=1,
                     n_heads=2, n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=1.0, qk_norm=True, cap_feat_dim=32,
                     axes_dims=[32, 48, 48], axes_lens=[300, 64, 64], rope_theta=256.0, z_image_modulation=True,
                     time_scale=1000.0, pad_tokens_multiple=32),
                (1, 16, 16, 16), (8, 32), None),
    "cosmos-predict2": (dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                             out_channels=16, patch_spatial=2, patch_temporal=1, concat_padding_mask=True,
                             model_channels=64, num_blocks=2, num_heads=2, crossattn_emb_channels=32,
                             pos_emb_cls="rope3d", use_adaln_lora=True, adaln_lora_dim=16,
                             rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0,
                             rope_t_extrapolation_ratio=1.0),
                        (1, 16, 1, 16, 16), (8, 32), None),
}
PREFIX = {"cosmos-predict2": "net."}


def _config(family, unet_config):
    import comfy.supported_models

    from modelsmith.core import registry
    cls = getattr(comfy.supported_models, registry.get(family).config_classes[0])
    return cls(dict(unet_config))


def state_dict(family, seed=0, dtype=torch.float32):
    """The tiny model's weights in the file layout of its family (random, seeded)."""
    model_config = _config(family, _filtered(family))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    tiny.randomize(model.diffusion_model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # stored buffers too (SD3's pos_embed starts as uninitialised memory)
        for _, b in model.diffusion_model.named_buffers():
            if b.is_floating_point() and b.numel():
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)
    prefix = PREFIX.get(family, "")
    return {prefix + k: v.detach().to(dtype).contiguous() for k, v in model.diffusion_model.state_dict().items()}


def _filtered(family):
    """The spec's unet_config without options the running core's DiT class does not take."""
    cfg = dict(SPECS[family][0])
    cls = _dit_class(family)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        cfg = {k: v for k, v in cfg.items() if k in params}
    elif cls.__name__ == "Flux":  # Flux takes **kwargs into FluxParams: only its fields
        import dataclasses

        from comfy.ldm.flux.model import FluxParams
        fields = {f.name for f in dataclasses.fields(FluxParams)}
        cfg = {k: v for k, v in cfg.items() if k in fields or k == "image_model"}
    return cfg


def _dit_class(family):
    if family in ("flux1", "flux2"):
        from comfy.ldm.flux.model import Flux
        return Flux
    if family == "sd3":
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
        return OpenAISignatureMMDITWrapper
    if family == "qwen-image":
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
        return QwenImageTransformer2DModel
    if family in ("lumina2", "z-image"):
        from comfy.ldm.lumina.model import NextDiT
        return NextDiT
    from comfy.ldm.cosmos.predict2 import MiniTrainDIT
    return MiniTrainDIT


def core_load(path, family, dtype=torch.float32):
    """A ModelPatcher for the tiny file at `path`, loaded as core loads a detected diffusion model."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    prefix = PREFIX.get(family, "")
    if prefix:
        sd = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    model_config = _config(family, _filtered(family))
    import comfy.model_detection
    detect = getattr(comfy.utils, "detect_layer_quantization", None) or comfy.model_detection.detect_layer_quantization
    if "state_dict" in inspect.signature(detect).parameters:   # current core: comfy_quant tensors
        quant = detect(sd, "")
        if quant:
            model_config.quant_config = quant
    else:                                                        # ComfyUI 0.3.x: the header metadata
        quant = detect(dict(metadata or {}))
        if quant:
            model_config.layer_quant_config = quant
    cpu = torch.device("cpu")
    # as core: a quantized file computes in the dtype core picks for its device (weight dtype None)
    manual_cast = comfy.model_management.unet_manual_cast(None if quant else dtype, cpu,
                                                          model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(sd, "", device=cpu)
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def sample(patcher, family, steps=2, seed=3):
    """Latents from comfy.sample.sample with tiny conditioning of the family's shapes."""
    import comfy.sample
    _, latent, (tokens, width), pooled = SPECS[family]
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, pooled, generator=g)} if pooled else {}
    pos = [[torch.randn(1, tokens, width, generator=g), dict(extra)]]
    neg = [[torch.randn(1, tokens, width, generator=g), dict(extra)]]
    empty = torch.zeros(latent)
    noise = comfy.sample.prepare_noise(empty, seed)
    return comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", pos, neg, empty, seed=seed)
