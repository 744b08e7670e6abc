"""The family registry: one record per model family, holding everything the pack knows about it.

Inspection (core/inspect.py), both loaders, both samplers, merge (core/blocks.py), quantize (file and
run time), the LoRA check and the Model Doctor read these records; no other module keeps a table
keyed by family. How a family is recognised from its tensors is core/families.py (code over the
`signature` keys named here); what a loaded ComfyUI model is, is `for_config` below (compat/family.py
hands it the runtime's config object). A new family is one record here plus its tests.

Facts are those of the models' official ComfyUI templates and releases (settings), ComfyUI's
`comfy_extras/nodes_model_merging_model_specific.py` (block names) and current practice for
quantized releases (keep-in-high-precision layers: input and output projections, embedders,
modulation, norms, final layers). No torch, no ComfyUI."""
from __future__ import annotations

import re

# A layer whose name holds a norm: kept in high precision by every family's preset.
NORM = r"norm"
_FRESH_DICT = object()  # a field default: a new empty dict for each record


def _record(cls):
    """A read-only record class from its annotated fields (in order; a class-level value is the
    default). What `dataclasses.dataclass(frozen=True)` gives here, without importing `dataclasses`
    (and `inspect`, `ast`, `dis` with it), which cost the command line about 5 ms of start-up."""
    names = tuple(cls.__annotations__)
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}

    def __init__(self, *args, **kw):
        values = dict(zip(names, args))
        wrong = sorted((kw.keys() & values.keys()) | (kw.keys() - set(names)))
        if len(args) > len(names) or wrong:
            raise TypeError(f"{cls.__name__}: bad arguments {wrong or len(args)}")
        values.update(kw)
        for n in names:
            if n not in values:
                if n not in defaults:
                    raise TypeError(f"{cls.__name__} needs {n}")
                values[n] = {} if defaults[n] is _FRESH_DICT else defaults[n]
        self.__dict__.update(values)

    def __setattr__(self, name, value):
        raise AttributeError(f"{cls.__name__} records are read-only")

    def __repr__(self):
        return f"{cls.__name__}(" + ", ".join(f"{n}={self.__dict__[n]!r}" for n in names) + ")"
    cls.__init__, cls.__setattr__, cls.__repr__, cls._fields = __init__, __setattr__, __repr__, names
    return cls


@_record
class Blocks:
    """Block-weight names of a family. `unet`: the seed guide's BASE, IN00.., M00, OUT00.. (+VAE for
    SDXL) over `levels` input/output levels. Otherwise core's model-specific merge node names: `head`
    parts, one name per index of each `indexed` stem (counted from the file, so depth variants get
    their own count), then `tail` parts. Everything else is BASE."""
    unet_levels: int = 0
    vae: bool = False
    head: tuple = ()
    indexed: tuple = ()
    tail: tuple = ()
    aliases: tuple = ()   # (regex on a name, replacement): older names still accepted in recipes


@_record
class Family:
    id: str
    label: str
    signature: tuple            # denoiser keys (prefix stripped) that mark the architecture
    prediction: str             # "flow", or "eps" for UNets (eps / v / edm then read from markers)
    settings: dict              # recommended: size, steps, cfg, sampler, scheduler, shift / guidance
    text_encoders: tuple        # what the denoiser needs beside it
    vae: str                    # the VAE it decodes with, in words
    vae_signature: tuple        # (latent channels, conv kernel rank) of that VAE
    size_multiple: int
    modelspec: str              # ModelSpec architecture id
    blocks: Blocks
    keep_high: tuple            # regexes on layer names kept in high precision when quantizing
    config_classes: tuple       # ComfyUI supported_models class names; the first builds the family
    config_match: dict = _FRESH_DICT  # unet_config values that pick this record among those
    variants: dict = _FRESH_DICT      # variant key -> {"settings": {...}, "modelspec": ...}
    lora_style: str | None = None   # the LoRA key family (core/lora.py) that fits it
    keep_high_nvfp4_file: tuple = ()  # more layers kept when writing nvfp4 files (core's detection reads them)
    fp16_overflow: bool = False       # the residual stream overflows fp16
    vae_fp16_overflow: bool = False   # its VAE decodes to NaN in fp16 (the SDXL VAE)
    core_merge_node: str | None = None  # core's model-specific merge node, where it has one
    pack_sampler: str | None = None     # the pack's sampler node made for it
    pack_loader: str | None = None      # the pack's loader node made for its separate files
    core_native: dict = _FRESH_DICT  # what ComfyUI's own implementation of it builds
    files: dict = _FRESH_DICT  # the official file names, by models folder (loader defaults)
    sizes: tuple = ()  # size presets (name, width, height) of the pack's sampler for it, portrait first
    base_model: str | None = None  # the Hugging Face repository of the base model (model cards' base_model)
    latent: int = 0  # the sampler latent's channels where they are not the VAE's (FLUX.2 packs 2x2 of 32)
    clip_type: str = "stable_diffusion"  # the `type` core's CLIP loaders take for its text encoders

    @property
    def latent_channels(self) -> int:
        return self.latent or self.vae_signature[0]


_UNET_KEEP = (r"(^|\.)input_blocks\.0\.", r"(^|\.)out\.", r"(^|\.)time_embed\.", NORM)
_SDXL_KEEP = _UNET_KEEP + (r"(^|\.)label_emb\.",)  # SDXL's size/pooled embedding too
_UNET_NVFP4 = (r"(^|\.)attn2\.to_[kv]$",)
_SD_SIG = ("input_blocks.0.0.weight", "conv_in.weight")
_MMDIT_SIG = ("joint_blocks.0.context_block.attn.qkv.weight", "joint_blocks.0.x_block.attn.qkv.weight")
_MMDIT_BLOCKS = Blocks(head=("pos_embed", "x_embedder", "context_embedder", "y_embedder", "t_embedder"),
                       indexed=("joint_blocks",), tail=("final_layer",))
_MMDIT_KEEP = (r"(^|\.)(pos_embed|x_embedder|context_embedder|y_embedder|t_embedder|final_layer)\.",
               r"adaLN_modulation")
_SD3 = dict(settings=dict(width=1024, height=1024, steps=28, cfg=4.5, sampler="euler", scheduler="sgm_uniform", shift=3.0),
            text_encoders=("clip-l", "clip-g", "t5xxl"), vae="the SD3 VAE (16-channel)", vae_signature=(16, 4),
            size_multiple=16, blocks=_MMDIT_BLOCKS, keep_high=_MMDIT_KEEP, config_classes=("SD3",), clip_type="sd3",
            signature=_MMDIT_SIG, prediction="flow", lora_style="sd3")
_NEXTDIT_BLOCKS = Blocks(head=("x_embedder", "t_embedder", "cap_embedder", "siglip_embedder"),
                         indexed=("noise_refiner", "context_refiner", "siglip_refiner", "layers"),
                         tail=("norm_final", "final_layer"))
_NEXTDIT_KEEP = (r"(^|\.)(x_embedder|t_embedder|cap_embedder|siglip_embedder|final_layer)\.", r"adaLN_modulation", NORM)
_NEXTDIT_SIG = ("cap_embedder.1.weight",)
_COSMOS_HEAD = ("pos_embedder", "extra_pos_embedder", "x_embedder", "t_embedder", "t_embedding_norm")
_B_ALIAS = ((r"^B(\d+)$", "blocks.{0}"),)  # the pack's earlier Anima/Cosmos names (B00..) in recipes
# SDXL's training buckets (~1 MP, multiples of 64) and Anima's ~1 MP sizes (multiples of 16)
_SDXL_SIZES = (("1:1", 1024, 1024), ("3:4", 896, 1152), ("2:3", 832, 1216), ("9:16", 768, 1344), ("5:12", 640, 1536),
               ("4:3", 1152, 896), ("3:2", 1216, 832), ("16:9", 1344, 768), ("12:5", 1536, 640))
_ANIMA_SIZES = (("1:1", 1024, 1024), ("3:4", 896, 1152), ("2:3", 832, 1216), ("9:16", 768, 1344),
                ("4:3", 1152, 896), ("3:2", 1216, 832), ("16:9", 1344, 768))

FAMILIES: tuple[Family, ...] = (
    Family("sd1", "SD1", _SD_SIG, "eps",
           dict(width=512, height=512, steps=25, cfg=7.0, sampler="euler_ancestral", scheduler="normal"),
           ("clip-l",), "an SD1 VAE (vae-ft-mse-840000-ema-pruned)", (4, 4), 64, "stable-diffusion-v1",
           Blocks(unet_levels=12), _UNET_KEEP, ("SD15",), lora_style="sd1/sdxl", keep_high_nvfp4_file=_UNET_NVFP4,
           core_merge_node="ModelMergeSD1", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5"),
    Family("sd2", "SD2", _SD_SIG, "eps",
           dict(width=512, height=512, steps=25, cfg=7.0, sampler="euler", scheduler="normal"),
           ("clip-h",), "an SD VAE", (4, 4), 64, "stable-diffusion-v2-512",
           Blocks(unet_levels=12), _UNET_KEEP, ("SD20", "SD21UnclipL", "SD21UnclipH"),
           variants={"v": {"settings": dict(width=768, height=768), "modelspec": "stable-diffusion-v2-768-v"}},
           lora_style="sd1/sdxl", keep_high_nvfp4_file=_UNET_NVFP4, core_merge_node="ModelMergeSD1", base_model="stabilityai/stable-diffusion-2-1"),
    Family("sdxl", "SDXL", _SD_SIG, "eps",
           dict(width=1024, height=1024, steps=25, cfg=6.0, sampler="euler_ancestral", scheduler="normal"),
           ("clip-l", "clip-g"), "sdxl_vae.safetensors (or sdxl-vae-fp16-fix for fp16)", (4, 4), 64,
           "stable-diffusion-xl-v1-base", Blocks(unet_levels=9, vae=True), _SDXL_KEEP, ("SDXL",),
           # v-prediction (with or without ZTSNR): NoobAI-XL v-pred's card, CFG 4-5 with rescale 0.7
           variants={"v": {"settings": dict(steps=28, cfg=4.5, sampler="euler", cfg_rescale=0.7)}}, clip_type="sdxl",
           lora_style="sd1/sdxl", keep_high_nvfp4_file=_UNET_NVFP4, core_merge_node="ModelMergeSDXL",
           vae_fp16_overflow=True, pack_sampler="ModelsmithSDXLSampler", sizes=_SDXL_SIZES, base_model="stabilityai/stable-diffusion-xl-base-1.0"),
    Family("sdxl-refiner", "SDXL refiner", _SD_SIG, "eps",
           dict(width=1024, height=1024, steps=25, cfg=6.0, sampler="euler", scheduler="normal"),
           ("clip-g",), "sdxl_vae.safetensors", (4, 4), 64, "stable-diffusion-xl-v1-refiner",
           Blocks(unet_levels=12, vae=True), _SDXL_KEEP, ("SDXLRefiner",), lora_style="sd1/sdxl",
           keep_high_nvfp4_file=_UNET_NVFP4, vae_fp16_overflow=True, pack_sampler="ModelsmithSDXLSampler", base_model="stabilityai/stable-diffusion-xl-refiner-1.0"),
    Family("sd3.5-large", "SD3.5 Large", **dict(_SD3, config_match={"depth": 38}),
           modelspec="stable-diffusion-v3.5-large", core_merge_node="ModelMergeSD35_Large", base_model="stabilityai/stable-diffusion-3.5-large"),
    Family("sd3.5-medium", "SD3.5 Medium", **dict(_SD3, config_match={"x_block_self_attn": True},
                                                  settings=dict(_SD3["settings"], steps=40)),
           modelspec="stable-diffusion-v3.5-medium", core_merge_node="ModelMergeSD3_2B", base_model="stabilityai/stable-diffusion-3.5-medium"),
    Family("sd3", "SD3 Medium", **dict(_SD3, settings=dict(_SD3["settings"], sampler="dpmpp_2m")),
           modelspec="stable-diffusion-v3-medium", core_merge_node="ModelMergeSD3_2B", base_model="stabilityai/stable-diffusion-3-medium"),
    Family("flux1", "FLUX.1", ("double_blocks.0.img_attn.norm.key_norm.scale", "double_blocks.0.img_attn.norm.key_norm.weight"),
           "flow", dict(width=1024, height=1024, steps=20, cfg=1.0, sampler="euler", scheduler="simple", guidance=3.5),
           ("clip-l", "t5xxl"), "ae.safetensors (FLUX VAE)", (16, 4), 16, "flux-1-dev",
           Blocks(head=("img_in", "time_in", "guidance_in", "vector_in", "txt_in"),
                  indexed=("double_blocks", "single_blocks"), tail=("final_layer",)),
           (r"(^|\.)(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)\.", r"_mod\.", r"(^|\.)modulation\.", NORM),
           ("Flux", "FluxSchnell", "FluxInpaint"),
           variants={"schnell": {"settings": dict(steps=4, guidance=None), "modelspec": "flux-1-schnell",
                                 "base_model": "black-forest-labs/FLUX.1-schnell"}},
           lora_style="flux", core_merge_node="ModelMergeFlux1", clip_type="flux", base_model="black-forest-labs/FLUX.1-dev"),
    Family("flux2", "FLUX.2", ("double_stream_modulation_img.lin.weight",), "flow",
           dict(width=1024, height=1024, steps=20, cfg=1.0, sampler="euler", scheduler="simple", guidance=4.0),
           ("mistral-small-3.1",), "the FLUX.2 VAE (32-channel)", (32, 4), 16, "flux-2-dev",
           Blocks(head=("img_in", "time_in", "guidance_in", "txt_in", "double_stream_modulation_img",
                        "double_stream_modulation_txt", "single_stream_modulation"),
                  indexed=("double_blocks", "single_blocks"), tail=("final_layer",)),
           (r"(^|\.)(img_in|txt_in|time_in|guidance_in|final_layer)\.", r"(^|\.)(double|single)_stream_modulation", NORM),
           ("Flux2",), latent=128, variants={"klein-4b": {"modelspec": "flux-2-klein-4b", "text_encoders": ("qwen3-4b",)},
                                 "klein-9b": {"modelspec": "flux-2-klein-9b", "text_encoders": ("qwen3-8b",)}},
           lora_style="flux", base_model="black-forest-labs/FLUX.2-dev", clip_type="flux2"),
    Family("qwen-image", "Qwen-Image", ("txt_norm.weight",), "flow",
           dict(width=1328, height=1328, steps=20, cfg=2.5, sampler="euler", scheduler="simple", shift=3.1),
           ("qwen2.5-vl-7b",), "qwen_image_vae.safetensors", (16, 5), 16, "qwen-image",
           Blocks(head=("pos_embeds", "img_in", "txt_norm", "txt_in", "time_text_embed"),
                  indexed=("transformer_blocks",), tail=("proj_out",)),
           (r"(^|\.)(img_in|txt_in|time_text_embed|norm_out|proj_out)\.", r"(^|\.)(img|txt)_mod\.", NORM),
           ("QwenImage",), core_merge_node="ModelMergeQwenImage", clip_type="qwen_image", base_model="Qwen/Qwen-Image"),
    Family("z-image", "Z-Image", ("layers.0.adaLN_modulation.0.weight", "cap_embedder.1.weight"), "flow",
           dict(width=1024, height=1024, steps=8, cfg=1.0, sampler="res_multistep", scheduler="simple", shift=3.0),
           ("qwen3-4b",), "ae.safetensors (FLUX VAE)", (16, 4), 16, "z-image-turbo",
           _NEXTDIT_BLOCKS, _NEXTDIT_KEEP, ("ZImage",), base_model="Tongyi-MAI/Z-Image-Turbo", clip_type="lumina2"),
    Family("lumina2", "Lumina-Image 2", _NEXTDIT_SIG, "flow",
           dict(width=1024, height=1024, steps=25, cfg=4.0, sampler="res_multistep", scheduler="simple", shift=6.0),
           ("gemma-2-2b",), "ae.safetensors (FLUX VAE)", (16, 4), 16, "lumina-2",
           _NEXTDIT_BLOCKS, _NEXTDIT_KEEP, ("Lumina2",), base_model="Alpha-VLLM/Lumina-Image-2.0", clip_type="lumina2"),
    Family("anima", "Anima", ("llm_adapter.blocks.0.cross_attn.q_proj.weight",), "flow",
           dict(width=1024, height=1024, steps=30, cfg=4.0, sampler="er_sde", scheduler="simple", shift=3.0),
           ("qwen3-0.6b",), "qwen_image_vae.safetensors", (16, 5), 16, "anima-preview",
           Blocks(head=("pos_embedder", "x_embedder", "t_embedder", "t_embedding_norm"), indexed=("blocks",),
                  tail=("final_layer", "llm_adapter"), aliases=_B_ALIAS),
           # the Anima community preset: first block, block 1's AdaLN, final layer, adapter, embedders
           (r"(^|\.)blocks\.0\.", r"(^|\.)blocks\.1\.adaln_modulation", r"(^|\.)final_layer\.", r"(^|\.)llm_adapter\.",
            r"(^|\.)t_embedder\.", r"(^|\.)x_embedder\.", r"(^|\.)t_embedding_norm"),
           ("Anima", "AnimaConfig"), lora_style="anima", fp16_overflow=True, pack_sampler="ModelsmithAnimaSampler",
           pack_loader="ModelsmithAnimaLoader",
           variants={"turbo": {"settings": dict(steps=8, cfg=1.0)}},  # the Turbo LoRA / model
           files={"diffusion_models": "anima-base-v1.0.safetensors", "text_encoders": "qwen_3_06b_base.safetensors",
                  "vae": "qwen_image_vae.safetensors"}, sizes=_ANIMA_SIZES,
           # ComfyUI's native Anima (upstream PR 12012, January 2026): a fixed LLM adapter reading 1024-wide
           # Qwen3-0.6B states; 28 blocks for width 2048 whatever the file held, each tune at its own depth
           # from ComfyUI 0.33 on (upstream PR 15555). Header-only facts for the CLI; inside ComfyUI the
           # pack asks the running core (compat/core_probe.py), which answers in the same key names.
           core_native={"adapter": {"dim": 1024, "source_dim": 1024, "layers": 6, "heads": 16},
                        "base_blocks": 28, "base_width": 2048,
                        "native_since": "any ComfyUI with native Anima (January 2026 on)",
                        "any_depth_since": "ComfyUI >= 0.33"}),
    Family("cosmos-predict2", "Cosmos-Predict2", ("blocks.0.mlp.layer1.weight",), "flow",
           dict(width=1024, height=1024, steps=35, cfg=4.0, sampler="euler", scheduler="simple", shift=1.0),
           ("t5xxl-old",), "wan_2.1_vae.safetensors", (16, 5), 16, "cosmos-predict2",
           Blocks(head=_COSMOS_HEAD, indexed=("blocks",), tail=("final_layer",), aliases=_B_ALIAS),
           # the same DiT as Anima without the adapter: its first block, embedders and final layer
           (r"(^|\.)blocks\.0\.", r"(^|\.)blocks\.1\.adaln_modulation", r"(^|\.)final_layer\.",
            r"(^|\.)t_embedder\.", r"(^|\.)x_embedder\.", r"(^|\.)t_embedding_norm"),
           ("CosmosT2IPredict2", "CosmosI2VPredict2"), lora_style="anima", fp16_overflow=True,
           core_merge_node="ModelMergeCosmosPredict2_2B", base_model="nvidia/Cosmos-Predict2-2B-Text2Image",
           clip_type="cosmos"),
)

BY_ID = {f.id: f for f in FAMILIES}
IDS = tuple(BY_ID)
UNKNOWN_SETTINGS = dict(width=1024, height=1024, steps=25, cfg=5.0, sampler="euler", scheduler="normal")


def get(family_id: str | None) -> Family | None:
    return BY_ID.get(family_id or "")


def is_unet(family_id: str | None) -> bool:
    f = get(family_id)
    return bool(f and f.blocks.unet_levels)


def variant_key(family_id, variant=None, prediction=None) -> str | None:
    """Which of the record's variants applies: v-prediction SD2/SDXL, FLUX.1 schnell, ..."""
    f = get(family_id)
    if f is None:
        return None
    if prediction in ("v", "v-edm") and "v" in f.variants:
        return "v"
    return variant if variant in f.variants else None


def settings(family_id, variant=None, prediction=None) -> dict:
    """The recommended settings (None values removed)."""
    f = get(family_id)
    if f is None:
        return dict(UNKNOWN_SETTINGS)
    out = dict(f.settings)
    out.update(f.variants.get(variant_key(family_id, variant, prediction), {}).get("settings", {}))
    return {k: v for k, v in out.items() if v is not None}


def modelspec_architecture(family_id, variant=None, prediction=None) -> str:
    f = get(family_id)
    if f is None:
        return family_id or "unknown"
    return f.variants.get(variant_key(family_id, variant, prediction), {}).get("modelspec", f.modelspec)


def from_modelspec(arch: str) -> str | None:
    """The family a ModelSpec architecture id names (any variant's id too)."""
    for f in FAMILIES:
        if arch == f.modelspec or arch in (v.get("modelspec") for v in f.variants.values()):
            return f.id
    return None


def for_config(class_names, unet_config: dict | None = None) -> str | None:
    """The family of a loaded model from its config class and its base classes (most derived first)
    and its unet_config: the first record listing the most derived class whose config_match holds."""
    unet_config = unet_config or {}
    for name in class_names:
        for f in FAMILIES:
            if name in f.config_classes and all(unet_config.get(k) == v for k, v in f.config_match.items()):
                return f.id
    return None


def lora_fits(lora_style: str) -> tuple:
    """The families a LoRA of this key style applies to."""
    return tuple(f.id for f in FAMILIES if f.lora_style == lora_style)


def text_encoders(family_id, variant=None) -> tuple:
    """The text encoder ids a family (and variant: FLUX.2 klein reads Qwen3) needs."""
    f = get(family_id)
    if f is None:
        return ()
    return tuple(f.variants.get(variant, {}).get("text_encoders", f.text_encoders))


def served_by_text_encoder(te_id: str) -> tuple:
    """The families (with a variant, as "flux2 klein-4b") a text encoder serves."""
    out = []
    for f in FAMILIES:
        if te_id in f.text_encoders:
            out.append(f.id)
        out += [f"{f.id} {v}" for v, d in f.variants.items() if te_id in d.get("text_encoders", ())]
    return tuple(out)


def served_by_vae(signature) -> tuple:
    """The families whose VAE has this (latent channels, conv rank) signature."""
    return tuple(f.id for f in FAMILIES if f.vae_signature == tuple(signature))


def settings_advice(family_id, width, height, steps, cfg, variant=None) -> list[str]:
    """Sentences for sampler settings far from the family's recommended ones: the area outside half to
    twice the recommended, steps outside half to twice, CFG more than 2 away."""
    rec = settings(family_id, variant)
    out = []
    area, want = width * height, rec["width"] * rec["height"]
    if not want / 2 <= area <= want * 2:
        out.append(f"{width}x{height} is far from the ~{want / 2**20:.1f} MP this model was trained at "
                   f"(recommended {rec['width']}x{rec['height']} or another bucket of that area).")
    if not rec["steps"] / 2 <= steps <= rec["steps"] * 2:
        out.append(f"{steps} steps: about {rec['steps']} are recommended.")
    if abs(cfg - rec["cfg"]) > 2:
        out.append(f"CFG {cfg:g}: about {rec['cfg']:g} is recommended.")
    return out


def quantize_presets() -> list[str]:
    """The preset names a user can pick: one per family."""
    return [f.id for f in FAMILIES]


def compiled_aliases(f: Family):
    return [(re.compile(p), r) for p, r in f.blocks.aliases]
