"""Anima nodes: one loader for its three files and a sampler with the official defaults."""
from __future__ import annotations

import os

import comfy.model_management
import comfy.samplers
import comfy.sd
import folder_paths
import nodes as comfy_nodes  # ComfyUI's own nodes.py (common_ksampler)
import torch

from ..core import registry, resolution
from ..core.prompt import NEGATIVE
from ..core.errors import ModelsmithError, a
from ..core.inspect import inspect_file
from . import common

_REC = registry.settings("anima")          # the widgets' defaults: the Anima record
_TURBO = registry.settings("anima", "turbo")
DEFAULT_FILES = registry.get("anima").files
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _choices(folder):
    """The files really present in the folder (an empty folder lists none: a default name is never shown
    as if it were there), and the official file as the default when it is present."""
    names = folder_paths.get_filename_list(folder) if folder in folder_paths.folder_names_and_paths else []
    default = DEFAULT_FILES[folder]
    if default not in names and folder == "diffusion_models":
        default = next((n for n in names if os.path.basename(n).lower().startswith("anima")), default)
    if default not in names:
        default = names[0] if names else None
    return names, default


def _check_dit(path):
    rep = inspect_file(path)
    if rep["family"] != "anima":
        what = f"{a(rep['family'])} {rep['layout'] or 'file'}" if rep["family"] != "unknown" else "not an Anima model"
        raise ModelsmithError(f"{os.path.basename(path)} is {what}; expected an Anima diffusion model "
                              f"(diffusion_models/anima-*.safetensors: Cosmos-Predict2 blocks plus llm_adapter).")
    return rep


def _check_dit_whole(rep, path):
    from ..compat.quantized import check_core_reads
    check_core_reads(rep.get("quantization") or {}, os.path.basename(path))
    extra = rep.get("details", {}).get("extra_modules")
    if extra:
        raise ModelsmithError(f"{os.path.basename(path)} holds modules Modelsmith's Anima does not know "
                              f"({', '.join(extra)}); refused rather than run without them.")


def _check_pair(te_sd, te_path, rep, dm_path):
    """The text encoder must be the one the DiT's LLM adapter was trained on (its input width names it)."""
    from ..core.families import ANIMA_TEXT_ENCODERS, text_encoder_id
    te_id = text_encoder_id({k: (str(v.dtype), tuple(v.shape)) for k, v in te_sd.items()})
    d = rep.get("details", {})
    want = d.get("text_encoder")
    what = f"a {d.get('blocks')}-block Anima ({rep.get('variant')})"
    if te_id and want in ANIMA_TEXT_ENCODERS.values() and te_id != want:
        raise ModelsmithError(f"{os.path.basename(te_path)} is a {te_id} text encoder, but {os.path.basename(dm_path)} is "
                              f"{what} whose LLM adapter reads {want} states ({d.get('adapter_source_dim')} wide): they do not belong together "
                              f"(pick {want}).")
    if te_id and te_id.startswith("qwen3.5"):
        raise ModelsmithError(f"{os.path.basename(te_path)} is a {te_id} text encoder ({what} pairs with it); "
                              f"Modelsmith's Anima loader runs Qwen3 encoders only and cannot run Qwen3.5's "
                              f"linear-attention layers yet: refused rather than encode prompts wrongly.")


def _check_te(sd, path):
    if "model.layers.0.self_attn.q_norm.weight" not in sd:
        kind = "a T5 encoder" if any(k.startswith(("encoder.block.", "shared.")) for k in sd) else "not a Qwen3 encoder"
        raise ModelsmithError(f"{os.path.basename(path)} is {kind}; expected the Qwen3-0.6B text encoder "
                              f"(text_encoders/qwen_3_06b_base.safetensors).")


def _check_vae(sd, path):
    if "decoder.middle.0.residual.0.gamma" not in sd:
        raise ModelsmithError(f"{os.path.basename(path)} is not a Wan 2.1 / Qwen-Image VAE; expected "
                              f"vae/qwen_image_vae.safetensors.")


class ModelsmithAnimaLoader(common.LoaderNode):
    DESCRIPTION = ("Loads Anima from its three files (diffusion model, Qwen3-0.6B text encoder, Qwen-Image VAE) "
                   "on any ComfyUI: native Anima when the runtime has it, Modelsmith's compat layer otherwise.")

    @classmethod
    def INPUT_TYPES(cls):
        dm, dm_default = _choices("diffusion_models")
        te, te_default = _choices("text_encoders")
        vae, vae_default = _choices("vae")
        def opt(default, tooltip):
            return {"tooltip": tooltip, **({"default": default} if default is not None else {})}
        return {"required": {
            "diffusion_model": (dm, opt(dm_default, "models/diffusion_models/anima-*.safetensors (any Anima depth)")),
            "text_encoder": (te, opt(te_default, "models/text_encoders/qwen_3_06b_base.safetensors")),
            "vae": (vae, opt(vae_default, "models/vae/qwen_image_vae.safetensors")),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip":
                      "Compute dtype of the denoiser (auto: bf16 where supported). fp16 keeps the residual stream in fp32."}),
        }}

    def load(self, diffusion_model, text_encoder, vae, dtype="auto"):
        from ..compat import anima as compat
        dm_path = folder_paths.get_full_path_or_raise("diffusion_models", diffusion_model)
        te_path = folder_paths.get_full_path_or_raise("text_encoders", text_encoder)
        vae_path = folder_paths.get_full_path_or_raise("vae", vae)
        report = _check_dit(dm_path)
        _check_dit_whole(report, dm_path)
        te_sd = common.read_state_dict(te_path)
        _check_pair(te_sd, te_path, report, dm_path)
        _check_te(te_sd, te_path)
        vae_sd = common.read_state_dict(vae_path)
        _check_vae(vae_sd, vae_path)
        emb = folder_paths.get_folder_paths("embeddings")
        sd, metadata = common.read_state_dict(dm_path, with_metadata=True)
        config = compat.anima_config(sd, metadata)
        te_hidden = te_sd["model.embed_tokens.weight"].shape[1] if "model.embed_tokens.weight" in te_sd else None
        if te_hidden is not None and te_hidden != config["adapter"]["source_dim"]:
            raise ModelsmithError(
                f"{os.path.basename(te_path)} is a {te_hidden}-wide text encoder, but the LLM adapter of "
                f"{os.path.basename(dm_path)} reads {config['adapter']['source_dim']}-wide states: they do not belong "
                f"together (a {config['num_blocks']}-block Anima; pick its own text encoder)")
        lines = []
        why_not = compat.native_misfit(config)
        if why_not is None:
            model = compat.load_native_anima(sd, DTYPES[dtype], metadata=metadata, config=config)
            fixed = getattr(model, "modelsmith_native_corrected", {})
            lines.append(f"denoiser: ComfyUI's native Anima, {config['num_blocks']} blocks" +
                         (f" (core's detection would have built {', '.join(fixed)} differently; "
                          f"set from the file)" if fixed else ""))
        else:
            model = compat.load_anima_model(sd, DTYPES[dtype], metadata=metadata)
            lines.append(f"denoiser: Modelsmith compat Anima, {config['num_blocks']} blocks ({why_not})")
        from ..compat import qwen3
        te_why_not = qwen3.text_encoder_misfit(te_sd)
        if te_why_not is None:
            clip_type = getattr(comfy.sd.CLIPType, "ANIMA", comfy.sd.CLIPType.STABLE_DIFFUSION)
            clip = comfy.sd.load_clip([te_path], embedding_directory=emb, clip_type=clip_type)
            lines.append("text encoder: ComfyUI's native Anima Qwen3-0.6B")
        else:
            clip = qwen3.load_text_encoder(te_sd, embedding_directory=emb)
            lines.append(f"text encoder: Modelsmith compat Qwen3 ({te_why_not})")
        backend = "native" if why_not is None else "modelsmith compat"
        vae_obj = comfy.sd.VAE(sd=vae_sd)
        settings = common.settings_from_report(report, "flow", False)
        settings["backend"] = backend
        settings["report"] = "; ".join(lines)
        return (model, clip, vae_obj, settings)


def _loras():
    return folder_paths.get_filename_list("loras") if "loras" in folder_paths.folder_names_and_paths else []


def _turbo_default():
    """The official turbo LoRA when it is in models/loras (anima-turbo-lora*), else none."""
    return next((n for n in _loras() if "turbo" in os.path.basename(n).lower() and "anima" in n.lower()), "none")


class ModelsmithAnimaSampler:
    DESCRIPTION = ("Samples Anima with the official defaults: ~1 MP sizes in multiples of 16, 30 steps, CFG 4, er_sde, "
                   "simple, flow shift 3; `turbo` switches to 8 steps at CFG 1 for the Turbo LoRA/model.")
    CATEGORY = "modelsmith/sampling"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("LATENT", "IMAGE")
    FUNCTION = "sample"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "positive_text": ("STRING", {"default": "", "multiline": True, "tooltip": "Used with a CLIP when no positive CONDITIONING is connected."}),
            "negative_text": ("STRING", {"default": NEGATIVE["anima"], "multiline": True}),
            "size": (resolution.preset_labels(resolution.ANIMA_PRESETS), {"default": "1:1 (1024x1024)"}),
            "width": ("INT", {"default": 1024, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 1024, "min": 16, "max": 4096, "step": 16}),
            "steps": ("INT", {"default": _REC["steps"], "min": 1, "max": 200}),
            "cfg": ("FLOAT", {"default": _REC["cfg"], "min": 0.0, "max": 30.0, "step": 0.1}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": _REC["sampler"]}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": _REC["scheduler"]}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "turbo": ("BOOLEAN", {"default": False, "tooltip": f"Turbo LoRA/model: {_TURBO['steps']} steps, CFG {_TURBO['cfg']:g}."}),
        }, "optional": {
            "clip": ("CLIP",), "vae": ("VAE",),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
            "turbo_lora": (["none"] + _loras(), {"default": _turbo_default(), "tooltip":
                           "With `turbo` on, this LoRA (e.g. anima-turbo-lora-v0.2) is applied before sampling, "
                           "checked against the model; none: the model is already a turbo model or carries the LoRA."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."}),
        }, "hidden": common.HIDDEN_GRAPH}

    def sample(self, model, positive_text, negative_text, size, width, height, steps, cfg, sampler_name, scheduler, seed,
               turbo, clip=None, vae=None, positive=None, negative=None, turbo_lora="none", batch_size=1,
               prompt=None, unique_id=None):
        common.check_vae_for_image(vae, prompt, unique_id, 1, "Anima Sampler")
        lines = []
        if turbo:
            steps, cfg = _TURBO["steps"], _TURBO["cfg"]
            lines.append(f"turbo: ran {steps} steps at CFG {cfg:g} (the steps and cfg widgets are not used)")
            if turbo_lora and turbo_lora != "none":
                from .lora import apply_checked_lora
                model, lora_lines = apply_checked_lora(model, folder_paths.get_full_path_or_raise("loras", turbo_lora), 1.0)
                lines += lora_lines
            else:
                lines.append(f"turbo without a turbo LoRA: unless this model is itself a turbo model, {steps} steps at CFG {cfg:g} "
                             "give an unfinished image; pick turbo_lora (anima-turbo-lora*) or turn turbo off")

        def cond(given, text, name):
            common.check_conditioning(given, name, prompt, unique_id)
            if given is not None:
                return given
            if clip is None:
                raise ModelsmithError("connect a CLIP (or CONDITIONING) to the Anima sampler")
            return clip.encode_from_tokens_scheduled(clip.tokenize(text))

        pos, neg = cond(positive, positive_text, "positive"), cond(negative, negative_text, "negative")
        for given, text, name in ((positive, positive_text, "positive"), (negative, negative_text, "negative")):
            if given is not None and text.strip():
                lines.append(f"{name}: the connected CONDITIONING is used; the {name}_text box is not")
        w, h = resolution.preset_size(size, resolution.ANIMA_PRESETS, resolution.snap(width, height, registry.get("anima").size_multiple))
        if size != "custom" and (width, height) != (w, h):
            lines.append(f"size {size}: the width/height widgets ({width}x{height}) are not used (choose size custom "
                         f"to use them)")
        lines += registry.settings_advice("anima", w, h, steps, cfg, "turbo" if turbo else None)
        latent = {"samples": torch.zeros([batch_size, 16, 1, h // 8, w // 8],
                                         device=comfy.model_management.intermediate_device())}
        (out,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, pos, neg, latent)
        image = None
        if vae is not None:
            image = vae.decode(out["samples"])
            if image.ndim == 5:
                image = image.reshape(-1, *image.shape[-3:])
        lines.insert(0, f"{batch_size} x {w}x{h}, {steps} steps, CFG {cfg:g}, {sampler_name}/{scheduler}, seed {seed}")
        return {"ui": {"text": ["\n".join(lines)]}, "result": (out, image)}


NODE_CLASS_MAPPINGS = {"ModelsmithAnimaLoader": ModelsmithAnimaLoader, "ModelsmithAnimaSampler": ModelsmithAnimaSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"ModelsmithAnimaLoader": "Load Anima (3 files) (Modelsmith)",
                              "ModelsmithAnimaSampler": "Anima Sampler (Modelsmith)"}
