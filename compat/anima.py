"""Anima for ComfyUI runtimes that lack it (0.3.x has Cosmos-Predict2 but no Anima).

Anima = the runtime's Cosmos-Predict2 MiniTrainDIT + an LLM adapter that turns Qwen3-0.6B hidden
states into the DiT's cross-attention context, queried by T5 token ids (reference.md section 4).
The text encoder is compat/qwen3.py, the fp16 residual hooks compat/fp16_residual.py.
Everything here is built on the runtime's own classes (MiniTrainDIT, Llama2_, SDClipModel,
SDTokenizer, Wan21 latent format, flow sampling) and used only when the runtime has no native Anima.
Sizes are read from the checkpoint's tensors, so tunes with extra blocks load as they are.
"""
from __future__ import annotations


import torch
from torch import nn

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
from comfy.ldm.cosmos.predict2 import MiniTrainDIT
from comfy.ldm.modules.attention import optimized_attention_masked

from ..core import registry
from ..core.errors import ModelsmithError
from ..core.families import count_indexed
from .fp16_residual import enable_fp32_residual

CONTEXT_TOKENS = 512  # the adapter output is zero-padded to this many tokens
T5_VOCAB = 32128


def native_anima_available() -> bool:
    """True when the running ComfyUI ships its own Anima (then the pack uses it)."""
    import comfy.supported_models
    return hasattr(comfy.supported_models, "Anima")


# ----------------------------------------------------------------------------------------------
# LLM adapter (module names follow the checkpoint: llm_adapter.embed / blocks.N.* / out_proj / norm)

def _rotate(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rope_tables(length, head_dim, device, dtype, theta=10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


class AdapterAttention(nn.Module):
    def __init__(self, dim, context_dim, heads, ops, device=None, dtype=None):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = ops.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.k_proj = ops.Linear(context_dim, dim, bias=False, device=device, dtype=dtype)
        self.v_proj = ops.Linear(context_dim, dim, bias=False, device=device, dtype=dtype)
        self.o_proj = ops.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.q_norm = ops.RMSNorm(self.head_dim, eps=1e-6, device=device, dtype=dtype)
        self.k_norm = ops.RMSNorm(self.head_dim, eps=1e-6, device=device, dtype=dtype)

    def forward(self, x, context, rope_q, rope_k, mask=None):
        b, n, _ = x.shape
        m = context.shape[1]
        q = self.q_norm(self.q_proj(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(context).view(b, m, self.heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(context).view(b, m, self.heads, self.head_dim).transpose(1, 2)
        q = q * rope_q[0] + _rotate(q) * rope_q[1]
        k = k * rope_k[0] + _rotate(k) * rope_k[1]
        out = optimized_attention_masked(q, k, v, self.heads, mask=mask, skip_reshape=True, skip_output_reshape=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class AdapterBlock(nn.Module):
    """RMSNorm -> self-attention, RMSNorm -> cross-attention to the LLM states, RMSNorm -> GELU MLP."""

    def __init__(self, dim, source_dim, heads, ops, mlp_ratio=4, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm_self_attn = ops.RMSNorm(dim, eps=1e-6, **kw)
        self.self_attn = AdapterAttention(dim, dim, heads, ops, **kw)
        self.norm_cross_attn = ops.RMSNorm(dim, eps=1e-6, **kw)
        self.cross_attn = AdapterAttention(dim, source_dim, heads, ops, **kw)
        self.norm_mlp = ops.RMSNorm(dim, eps=1e-6, **kw)
        self.mlp = nn.Sequential(ops.Linear(dim, dim * mlp_ratio, **kw), nn.GELU(), ops.Linear(dim * mlp_ratio, dim, **kw))

    def forward(self, x, context, rope_x, rope_c, source_mask=None):
        x = x + self.self_attn(self.norm_self_attn(x), self.norm_self_attn(x), rope_x, rope_x)
        x = x + self.cross_attn(self.norm_cross_attn(x), context, rope_x, rope_c, mask=source_mask)
        return x + self.mlp(self.norm_mlp(x))


class LLMAdapter(nn.Module):
    def __init__(self, dim, source_dim, layers, heads, vocab=T5_VOCAB, ops=None, device=None, dtype=None):
        super().__init__()
        ops = ops or comfy.ops.disable_weight_init
        self.heads = heads
        self.embed = ops.Embedding(vocab, dim, device=device, dtype=dtype)
        self.blocks = nn.ModuleList([AdapterBlock(dim, source_dim, heads, ops, device=device, dtype=dtype)
                                     for _ in range(layers)])
        self.out_proj = ops.Linear(dim, dim, device=device, dtype=dtype)
        self.norm = ops.RMSNorm(dim, eps=1e-6, device=device, dtype=dtype)

    def forward(self, source, target_ids, source_mask=None):
        """source: [B, M, source_dim] LLM states; target_ids: [B, N] T5 ids -> [B, N, dim]."""
        x = self.embed(target_ids, out_dtype=source.dtype)
        head_dim = x.shape[-1] // self.heads
        rope_x = _rope_tables(x.shape[1], head_dim, x.device, x.dtype)
        rope_c = _rope_tables(source.shape[1], head_dim, x.device, x.dtype)
        mask = None
        if source_mask is not None:  # additive mask over the LLM tokens
            mask = (source_mask.to(x.dtype) - 1).mul(torch.finfo(x.dtype).max)[:, None, None, :]
        for block in self.blocks:
            x = block(x, source, rope_x, rope_c, source_mask=mask)
        return self.norm(self.out_proj(x))


def adapter_context(adapter, llm_states, t5_ids, t5_weights=None, source_mask=None):
    """The DiT context: adapter output, scaled per token by the prompt weights, zero-padded to 512."""
    out = adapter(llm_states, t5_ids, source_mask=source_mask)
    if t5_weights is not None:
        out = out * t5_weights.to(out.dtype)
    if out.shape[1] < CONTEXT_TOKENS:
        out = torch.nn.functional.pad(out, (0, 0, 0, CONTEXT_TOKENS - out.shape[1]))
    return out


# ----------------------------------------------------------------------------------------------
# Denoiser and model

class AnimaDiT(MiniTrainDIT):
    def __init__(self, *args, adapter, **kwargs):
        super().__init__(*args, **kwargs)
        self.llm_adapter = LLMAdapter(**adapter, ops=kwargs.get("operations"), device=kwargs.get("device"),
                                      dtype=kwargs.get("dtype"))

    def forward(self, x, timesteps, context, t5xxl_ids=None, t5xxl_weights=None, **kwargs):
        if t5xxl_ids is not None:
            context = adapter_context(self.llm_adapter, context, t5xxl_ids, t5xxl_weights)
        # latents whose size is not a multiple of the patch (e.g. 200x248 px): padded and cropped back
        # as current ComfyUI's MiniTrainDIT does itself (0.3.75's asserts instead)
        import comfy.ldm.common_dit
        orig = x.shape
        x = comfy.ldm.common_dit.pad_to_patch_size(x, (self.patch_temporal, self.patch_spatial, self.patch_spatial))
        out = super().forward(x, timesteps, context, **kwargs)
        return out[:, :, :orig[-3], :orig[-2], :orig[-1]]


class AnimaModel(comfy.model_base.BaseModel):
    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=AnimaDiT)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            ids, weights = kwargs.get("t5xxl_ids"), kwargs.get("t5xxl_weights")
            if ids is not None:
                device, dtype = kwargs["device"], self.get_dtype()
                if self.manual_cast_dtype is not None:
                    dtype = self.manual_cast_dtype
                w = weights.reshape(1, -1, 1).to(device=device, dtype=dtype) if weights is not None else None
                cross_attn = adapter_context(self.diffusion_model.llm_adapter, cross_attn.to(device=device, dtype=dtype),
                                             ids.reshape(1, -1).to(device), w)
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        return out


class AnimaConfig(comfy.supported_models_base.BASE):
    unet_config = {"image_model": "anima"}
    sampling_settings = {"multiplier": 1.0, "shift": registry.get("anima").settings["shift"]}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.Wan21
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return AnimaModel(self, device=device)


def dit_config_from_sd(sd: dict, prefix: str = "net.") -> dict:
    """MiniTrainDIT + adapter configuration read from the tensors (block counts counted, not assumed)."""
    def t(name):
        key = prefix + name
        if key not in sd:
            raise ModelsmithError(f"not an Anima diffusion model: missing {key}")
        return sd[key]

    x_emb = t("x_embedder.proj.1.weight")
    width = x_emb.shape[0]
    head_dim = t("blocks.0.self_attn.q_norm.weight").shape[0]
    adapter_dim = t("llm_adapter.embed.weight").shape[1]
    adapter_head = t("llm_adapter.blocks.0.self_attn.q_norm.weight").shape[0]
    return {
        "image_model": "anima", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
        "in_channels": x_emb.shape[1] // 4 - 1, "out_channels": t("final_layer.linear.weight").shape[0] // 4,
        "patch_spatial": 2, "patch_temporal": 1, "concat_padding_mask": True, "model_channels": width,
        "num_blocks": count_indexed(sd, prefix + "blocks"), "num_heads": width // head_dim,
        "crossattn_emb_channels": t("blocks.0.cross_attn.k_proj.weight").shape[1], "pos_emb_cls": "rope3d",
        "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
        "use_adaln_lora": True, "adaln_lora_dim": t("blocks.0.adaln_modulation_self_attn.1.weight").shape[0],
        "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
        "extra_per_block_abs_pos_emb": False, "rope_enable_fps_modulation": False,
        "adapter": {"dim": adapter_dim, "source_dim": t("llm_adapter.blocks.0.cross_attn.k_proj.weight").shape[1],
                    "layers": count_indexed(sd, prefix + "llm_adapter.blocks"), "heads": adapter_dim // adapter_head,
                    "vocab": t("llm_adapter.embed.weight").shape[0]},
    }


def anima_config(sd: dict, metadata: dict | None = None) -> dict:
    """dit_config_from_sd of a file as stored (prefix `net.` or none; quantized layers at their
    logical shapes)."""
    from .quantized import logical_shape, quantized_layers
    prefix = "net." if any(k.startswith("net.") for k in sd) else ""
    shapes = dict(sd)
    for layer, fmt in quantized_layers(sd, metadata, prefix).items():
        shapes[layer + ".weight"] = torch.empty(logical_shape(sd, layer, fmt), device="meta")
    return dit_config_from_sd(shapes, prefix)


def load_anima_model(sd: dict, dtype=None, metadata: dict | None = None):
    """A ModelPatcher for an Anima diffusion-model state dict (prefix `net.` or none).

    fp16 compute (fp16 weights or a fp16 compute dtype) goes through the fp32-residual path.
    Files in ComfyUI's quantized format (fp8 / nvfp4 layers with `comfy_quant`, or the
    `_quantization_metadata` header) load their quantized layers as QuantLinear modules."""
    from .quantized import attach_quantized, split_quantized
    prefix = "net." if any(k.startswith("net.") for k in sd) else ""
    config = anima_config(sd, metadata)  # the config reads shapes: quantized layers at their logical ones
    sd, quantized = split_quantized(sd, metadata, prefix)
    model_config = AnimaConfig(config)
    load_device = comfy.model_management.get_torch_device()
    params = sum(v.numel() for v in sd.values())
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(model_params=params, supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(sd, prefix, device="cpu")
    if quantized:
        attach_quantized(model.diffusion_model, sd, quantized, prefix)
    model.load_model_weights(sd, prefix)
    enable_fp32_residual(model.diffusion_model)  # active only when it computes in fp16
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=comfy.model_management.unet_offload_device())


# ----------------------------------------------------------------------------------------------
# Native Anima (current ComfyUI): core's own classes, at the depth the file has

# core's detection fixes these for width 2048 (28 blocks, 16 heads) and for any width (adaln 256,
# cross-attention 1024); the file decides them here
_DEPTH_KEYS = ("num_blocks", "num_heads", "adaln_lora_dim", "crossattn_emb_channels", "model_channels")


def native_misfit(config: dict) -> str | None:
    """None when core's native Anima can hold a file of this configuration, else why not."""
    from .core_probe import core_anima_adapter
    core = core_anima_adapter() if native_anima_available() else None
    if core is None:
        return "this ComfyUI has no native Anima"
    diff = [f"{k} {config['adapter'][k]} (core: {v})" for k, v in core.items() if config["adapter"].get(k) != v]
    if diff:
        return "its LLM adapter differs from core's fixed one: " + ", ".join(diff)
    return None


def load_native_anima(sd: dict, dtype=None, metadata: dict | None = None, config: dict | None = None):
    """Core's native Anima (model_base.Anima, MixedPrecisionOps for quantized files) built with the
    block count, heads and widths the tensors have, where core's detection would assume 28 blocks
    (`config`: anima_config of this file, when the caller has it already).

    Follows comfy.sd.load_diffusion_model_state_dict step by step (detection, dtype, manual cast,
    weights), with the detected unet_config corrected from the file; every block of the file must
    end up in the model, or the load is refused."""
    import comfy.model_detection
    import comfy.utils
    if hasattr(comfy.utils, "convert_old_quants"):
        sd, metadata = comfy.utils.convert_old_quants(sd, "", metadata=metadata)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    stripped = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    sd = stripped or sd
    model_config = comfy.model_detection.model_config_from_unet(sd, "", metadata=metadata)
    if model_config is None or type(model_config).__name__ != "Anima":
        raise ModelsmithError("ComfyUI's own detection does not take this file as Anima")
    file_config = config or anima_config(sd, metadata)
    corrected = {k: file_config[k] for k in _DEPTH_KEYS if model_config.unet_config.get(k) != file_config[k]}
    model_config.unet_config.update({k: file_config[k] for k in _DEPTH_KEYS})
    load_device = comfy.model_management.get_torch_device()
    params = comfy.utils.calculate_parameters(sd)
    weight_dtype = None if getattr(model_config, "quant_config", None) is not None else comfy.utils.weight_dtype(sd)
    supported = list(model_config.supported_inference_dtypes)
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(model_params=params, supported_dtypes=supported, weight_dtype=weight_dtype)
    cast_for = None if getattr(model_config, "quant_config", None) is not None else dtype
    manual_cast = comfy.model_management.unet_manual_cast(cast_for, load_device, supported)
    model_config.set_inference_dtype(dtype, manual_cast, device=load_device)
    model = model_config.get_model(sd, "", device="cpu")
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device())
    if patcher.is_dynamic() if hasattr(patcher, "is_dynamic") else False:
        model.load_model_weights(sd, "", assign=True)
    else:
        model.load_model_weights(sd, "")
    built = len(model.diffusion_model.blocks)
    if built != file_config["num_blocks"]:
        raise ModelsmithError(f"native Anima built {built} blocks for a {file_config['num_blocks']}-block file; refused "
                              f"(a truncated model gives broken images)")
    patcher.modelsmith_native_corrected = corrected
    return patcher
