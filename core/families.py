"""Family detection: how each family of core/registry.py is recognised from tensor names and shapes
(and the Anima, VAE and text-encoder details read from them). Functions over {name: (dtype, shape)};
no torch. What a family wants (settings, companions, blocks, layers kept) is its registry record."""
from __future__ import annotations

import re

from . import registry

VAE_PREFIXES = ("first_stage_model.", "vae.")


def vae_signature(table: dict) -> tuple[int, int] | None:
    """(latent channels, conv kernel rank) of the VAE in a {name: (dtype, shape)} table (a standalone
    VAE file or a checkpoint's baked-in one), read from its decoder's first conv; None without one."""
    for k, (_, shape) in table.items():
        stem = k
        for p in VAE_PREFIXES:
            if stem.startswith(p):
                stem = stem[len(p):]
        if stem in ("decoder.conv_in.weight", "decoder.conv1.weight") and len(shape) >= 4:
            return shape[1], len(shape)
    return None


def describe_vae(sig) -> str:
    z, rank = sig
    return f"{z}-channel {'video (Wan 2.1 / Qwen-Image style)' if rank == 5 else 'image'} VAE"


def count_indexed(keys, stem):
    """How many consecutive blocks `stem.N.` exist (max index + 1)."""
    pat = re.compile(re.escape(stem) + r"\.(\d+)\.")
    idx = [int(m.group(1)) for k in keys for m in [pat.match(k)] if m]
    return max(idx) + 1 if idx else 0


def _shape(t, name):
    v = t.get(name)
    return tuple(v[1]) if v is not None else None


def find_denoiser(tensors: dict):
    """(layout, prefix) of the denoiser in a {name: (dtype, shape)} table, or (None, None)."""
    names = tensors.keys()
    if any(k.startswith("model.diffusion_model.") for k in names):
        return "checkpoint", "model.diffusion_model."
    if "conv_in.weight" in tensors and any(k.startswith("down_blocks.") for k in names):
        return "diffusers", ""
    for marker in ("net.blocks.0.", "net.x_embedder."):
        if any(k.startswith(marker) for k in names):
            return "diffusion-model", "net."
    signatures = ("input_blocks.0.0.weight", "joint_blocks.0.", "double_blocks.0.", "txt_norm.weight",
                  "cap_embedder.1.weight", "blocks.0.mlp.layer1.weight", "double_stream_modulation_img.",
                  "x_embedder.", "transformer_blocks.0.", "single_transformer_blocks.0.")
    if any(k.startswith(s) for k in names for s in signatures):
        # diffusers transformers (FLUX/SD3) use attn.to_q; native ones don't
        if any(".attn.to_q.weight" in k for k in names) and "txt_norm.weight" not in tensors:
            return "diffusers", ""
        return "diffusion-model", ""
    return None, None


def detect_family(d: dict, layout: str):
    """family, variant, details for the denoiser table d (names without prefix).

    A decisive key whose shape has the wrong rank for its family (a 1-D conv weight, a 0-d
    projection) matches no family: the signatures read dimensions, and a shape without them is
    not that architecture."""
    try:
        return _detect_family(d, layout)
    except (IndexError, TypeError, ZeroDivisionError) as e:
        return "unknown", None, {"shape_mismatch": f"{type(e).__name__}: {e}"}


def _detect_family(d: dict, layout: str):
    info = {}
    if layout == "diffusers" and "conv_in.weight" in d:
        return _detect_diffusers_unet(d, info)
    if "input_blocks.0.0.weight" in d:
        return _detect_unet(d, info)
    if "joint_blocks.0.context_block.attn.qkv.weight" in d or "joint_blocks.0.x_block.attn.qkv.weight" in d:
        depth = (_shape(d, "x_embedder.proj.weight") or (0,))[0] // 64
        info["depth"] = depth
        if "joint_blocks.0.x_block.attn2.qkv.weight" in d:
            return "sd3.5-medium", None, info
        if "joint_blocks.0.context_block.attn.ln_q.weight" in d:
            return ("sd3.5-large" if depth >= 38 else "sd3.5-medium"), None, info
        return "sd3", None, info
    if "double_stream_modulation_img.lin.weight" in d:
        nd, ns = count_indexed(d, "double_blocks"), count_indexed(d, "single_blocks")
        hidden = (_shape(d, "img_in.weight") or (0,))[0]
        info.update(double_blocks=nd, single_blocks=ns, hidden=hidden)
        variant = {6144: "dev", 3072: "klein-4b", 4096: "klein-9b"}.get(hidden)
        return "flux2", variant, info
    # Flux.1 q/k norms: older files name the RMSNorm gain `.scale`, current ComfyUI saves `.weight`
    if any(f"double_blocks.0.img_attn.norm.key_norm.{p}" in d for p in ("scale", "weight")):
        variant = "dev" if any(k.startswith("guidance_in.") for k in d) else "schnell"
        return "flux1", variant, info
    if ("transformer_blocks.0.attn.norm_added_k.weight" in d and "x_embedder.weight" in d
            and any(k.startswith("single_transformer_blocks.") for k in d)):
        variant = "dev" if any(k.startswith("time_text_embed.guidance_embedder.") for k in d) else "schnell"
        return "flux1", variant, info
    if "txt_norm.weight" in d and any(k.startswith("transformer_blocks.") for k in d):
        info["blocks"] = count_indexed(d, "transformer_blocks")
        return "qwen-image", None, info
    if "cap_embedder.1.weight" in d and "noise_refiner.0.attention.k_norm.weight" in d:
        dim = d["cap_embedder.1.weight"][1][0]
        info["dim"] = dim
        info["layers"] = count_indexed(d, "layers")
        # Z-Image's modulation is a bare Linear (`adaLN_modulation.0`); Lumina 2's has a SiLU before it
        zimage = "layers.0.adaLN_modulation.0.weight" in d or ("layers.0.adaLN_modulation.1.weight" not in d and dim >= 3072)
        return ("z-image" if zimage else "lumina2"), None, info
    if "blocks.0.mlp.layer1.weight" in d:
        width = (_shape(d, "x_embedder.proj.1.weight") or (0,))[0]
        blocks = count_indexed(d, "blocks")
        info.update(blocks=blocks, width=width)
        variant = {2048: "2b", 5120: "14b"}.get(width)
        if "llm_adapter.blocks.0.cross_attn.q_proj.weight" in d:
            return "anima", anima_variant(d, info), info
        return "cosmos-predict2", variant, info
    if "joint_blocks.0.x_block.attn.qkv.weight" in d:
        return "sd3", None, info
    if "pos_embed.proj.weight" in d and "transformer_blocks.0.attn.add_q_proj.weight" in d:
        return "sd3", None, info
    return "unknown", None, info


# Anima depths in circulation: the 28-block 2B base and tunes grown to 40 (2.9B) and 52 blocks (3.8B)
ANIMA_DEPTHS = {28: "2b", 40: "2.9b", 52: "3.8b"}
# The LLM adapter's cross-attention reads the text encoder's hidden states: its input width names the encoder
ANIMA_TEXT_ENCODERS = {1024: "qwen3-0.6b", 2560: "qwen3.5-4b"}
# ComfyUI's native Anima, as the registry's Anima record describes it (adapter, depths, since when)
CORE_ANIMA = registry.get("anima").core_native
_DIT_TOP = {"pos_embedder", "x_embedder", "t_embedder", "t_embedding_norm", "blocks", "final_layer", "llm_adapter",
            "extra_pos_embedder", "logvar"}
_ADAPTER_TOP = {"embed", "blocks", "out_proj", "norm"}


def anima_variant(d, info) -> str:
    """The Anima variant from its tensors (block count, adapter depth and input width, any module
    beyond the Cosmos DiT + adapter), with what it pairs with and what stock native Anima would
    build from it; fills `info`. Returns the variant name ("2b", "2.9b", "3.8b" or "N-block")."""
    blocks = info.get("blocks") or count_indexed(d, "blocks")
    width = info.get("width") or (_shape(d, "x_embedder.proj.1.weight") or (0,))[0]
    k_proj = _shape(d, "llm_adapter.blocks.0.cross_attn.k_proj.weight") or (0, 0)
    embed = _shape(d, "llm_adapter.embed.weight") or (0, 0)
    source = k_proj[1] if len(k_proj) == 2 else 0
    adapter_blocks = count_indexed(d, "llm_adapter.blocks")
    extra = sorted({k.split(".", 1)[0] for k in d} - _DIT_TOP)
    extra += sorted({"llm_adapter." + k.split(".", 2)[1] for k in d if k.startswith("llm_adapter.")
                     and k.count(".") >= 2} - {"llm_adapter." + t for t in _ADAPTER_TOP})
    core = CORE_ANIMA["adapter"]
    core_adapter_fits = embed[1:] == (core["dim"],) and adapter_blocks == core["layers"] and source == core["source_dim"]
    if not core_adapter_fits or extra:
        since = None  # no stock ComfyUI builds this adapter or these modules
    elif blocks == CORE_ANIMA["base_blocks"] and width == CORE_ANIMA["base_width"]:
        since = CORE_ANIMA["native_since"]
    else:
        since = CORE_ANIMA["any_depth_since"]
    info.update(blocks=blocks, width=width, adapter_blocks=adapter_blocks, adapter_dim=embed[1] if len(embed) == 2 else 0,
                adapter_source_dim=source, extra_modules=extra,
                text_encoder=ANIMA_TEXT_ENCODERS.get(source, f"a {source}-wide text encoder"),
                core_adapter_fits=core_adapter_fits, comfyui_loads_whole_since=since)
    return ANIMA_DEPTHS.get(blocks, f"{blocks}-block")


QWEN3_SIZES = {1024: "qwen3-0.6b", 2048: "qwen3-1.7b", 2560: "qwen3-4b", 4096: "qwen3-8b"}
QWEN35_SIZES = {1024: "qwen3.5-0.8b", 2048: "qwen3.5-2b", 2560: "qwen3.5-4b", 4096: "qwen3.5-9b", 5120: "qwen3.5-27b"}


def text_encoder_id(t: dict) -> str | None:
    """Which Qwen text encoder a standalone file holds ({name: (dtype, shape)}), from its keys and
    widths: Qwen3.5 (hybrid linear attention, `model.language_model.` names) or Qwen3 (q/k norms)."""
    q35 = "model.language_model.layers.0.input_layernorm.weight"
    if q35 in t and any(".linear_attn." in k for k in t):
        width = (_shape(t, q35) or (0,))[0]
        return QWEN35_SIZES.get(width, f"qwen3.5 ({width} wide)")
    norm = _shape(t, "model.layers.0.post_attention_layernorm.weight") or _shape(t, "model.layers.0.input_layernorm.weight")
    if "model.layers.0.self_attn.q_norm.weight" in t and norm:
        return QWEN3_SIZES.get(norm[0], f"qwen3 ({norm[0]} wide)")
    return None


def _unet_common(d, in_key, k_key_candidates, info):
    in_ch = d[in_key][1][1]
    mc = d[in_key][1][0]
    ctx = None
    for k in k_key_candidates:
        if k in d:
            ctx = d[k][1][-1]
            break
    if ctx is None:  # find any cross-attention key projection
        for k, v in d.items():
            if k.endswith("attn2.to_k.weight"):
                ctx = v[1][-1]
                break
    info.update(in_channels=in_ch, model_channels=mc, context_dim=ctx)
    return in_ch, mc, ctx


def _variant_for_in_channels(in_ch):
    return {9: "inpaint", 8: "instruct-pix2pix"}.get(in_ch)


def _detect_unet(d, info):
    in_ch, mc, ctx = _unet_common(d, "input_blocks.0.0.weight",
                                  ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                                   "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"), info)
    variant = _variant_for_in_channels(in_ch)
    levels = count_indexed(d, "input_blocks")
    info["input_blocks"] = levels
    if "label_emb.0.0.weight" in d:
        adm = d["label_emb.0.0.weight"][1][1]
        info["adm_in_channels"] = adm
        if adm == 2560 or (mc == 384 and ctx == 1280):
            return "sdxl-refiner", variant, info
        if ctx == 1024:
            return "sd2", variant or "unclip", info
        depth = count_indexed(d, "input_blocks.7.1.transformer_blocks")
        info["depth_level3"] = depth
        if depth == 4 and mc == 320:
            variant = variant or "ssd-1b"
        return "sdxl", variant, info
    if ctx == 1024:
        return "sd2", variant, info
    return "sd1", variant, info


def _detect_diffusers_unet(d, info):
    in_ch, mc, ctx = _unet_common(d, "conv_in.weight",
                                  ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                                   "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"), info)
    variant = _variant_for_in_channels(in_ch)
    if "add_embedding.linear_1.weight" in d:
        adm = d["add_embedding.linear_1.weight"][1][1]
        info["adm_in_channels"] = adm
        if adm == 2560 or mc == 384:
            return "sdxl-refiner", variant, info
        return "sdxl", variant, info
    if ctx == 1024:
        return "sd2", variant, info
    return "sd1", variant, info


# The tensor ComfyUI uses to tell SD2-768-v from SD2-512-eps, per layout.
SD2_V_PROBE = {
    "checkpoint": "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias",
    "diffusion-model": "output_blocks.11.1.transformer_blocks.0.norm1.bias",
    "diffusers": "up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias",
}


TEXT_ENCODER_PREFIXES = (
    ("conditioner.embedders.0.transformer.", "clip-l"), ("cond_stage_model.transformer.", "clip-l"),
    ("cond_stage_model.model.", "clip-h"), ("conditioner.embedders.1.model.", "clip-g"),
    ("conditioner.embedders.0.model.", "clip-g"), ("text_encoders.clip_l.", "clip-l"),
    ("text_encoders.clip_g.", "clip-g"), ("text_encoders.t5xxl.", "t5xxl"),
    ("text_encoders.qwen3_06b.", "qwen3-0.6b"),
)


def prefix_set(names, depth: int = 4) -> set:
    """Every dotted prefix ("a.", "a.b.", ... up to `depth` parts, dot included) of the names."""
    deep = {tuple(k.split(".", depth)[:depth]) for k in names}
    return {".".join(parts[:i]) + "." for parts in deep for i in range(1, len(parts) + 1)}


def text_encoders_in(heads: set) -> list[str]:
    """Text encoders baked into a single-file checkpoint, from its prefix_set(), in a fixed order."""
    found = {enc for prefix, enc in TEXT_ENCODER_PREFIXES if prefix in heads}
    return [e for e in ("clip-l", "clip-h", "clip-g", "t5xxl", "qwen3-0.6b") if e in found]


# CLIP text models store `position_ids` (0..76) as a tensor. AUTOMATIC1111's Checkpoint Merger cast them
# to float and, with Add Difference before 2023-01-15, left values off an integer (75.9999 read back as
# 75): tools that use the stored ids (A1111, Forge, diffusers) then weaken or drop that token position.
POSITION_IDS_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_ids",
                     "cond_stage_model.transformer.embeddings.position_ids",
                     "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                     "conditioner.embedders.1.transformer.text_model.embeddings.position_ids",
                     "text_encoders.clip_l.transformer.text_model.embeddings.position_ids",
                     "text_encoders.clip_g.transformer.text_model.embeddings.position_ids",
                     "text_model.embeddings.position_ids")


def position_ids_keys(names) -> list[str]:
    return [k for k in POSITION_IDS_KEYS if k in names]


def damaged_positions(dtype: str, values) -> list[int] | None:
    """The positions whose stored id is not exactly its index (or every position of a float tensor
    with exact values: [] with a float dtype is still damage); None when the ids are healthy."""
    off = [i for i, v in enumerate(values) if v != i]
    if off or dtype not in ("I64", "I32"):
        return off
    return None

