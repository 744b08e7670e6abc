"""Loader nodes: inspect a file, load a checkpoint with the right settings, save it back."""
from __future__ import annotations

import json
import os

import torch

import comfy.model_detection
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths

from ..compat import sized
from ..core import inspect as core_inspect
from ..core import registry
from ..core.report import format_report
from ..core.errors import ModelsmithError, a
from . import common
from .sampling_patch import apply_prediction

PREDICTIONS = ["auto", "eps", "v", "v+ztsnr"]


class ModelsmithInspect:
    DESCRIPTION = "What a checkpoint is (family, layout, precision, prediction, ZTSNR, EMA), from its header."
    CATEGORY = "modelsmith/loaders"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("report", "json")
    FUNCTION = "inspect"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_file": (common.model_choices(common.MODEL_FOLDERS), {
            "tooltip": "A file from ComfyUI's models/checkpoints or models/diffusion_models (unet) folder."})}}

    def inspect(self, model_file):
        report = core_inspect.inspect_file(common.resolve_model(model_file))
        d = report.get("details") or {}
        if report["family"] == "anima" and d.get("blocks"):  # what *this* ComfyUI does with it, asked of core
            from ..compat.core_probe import anima_verdict_for_file
            verdict = anima_verdict_for_file(report["file"]["path"])
            if verdict is not None:
                report["comfyui"] = verdict
                report["warnings"].append(verdict["sentence"])
        text = format_report(report)
        return {"ui": {"text": [text]}, "result": (text, json.dumps(report, indent=2))}


def load_checkpoint_file(path: str, report: dict | None = None):
    """(model, clip, vae, report) for a single-file checkpoint, with Modelsmith's fixes."""
    report = report or core_inspect.inspect_file(path)
    if report["layout"] is None:  # no denoiser: the same hint Inspect gives (VAELoader, LoraLoader, ...)
        hint = core_inspect.kind_hint(report.get("kind")) or " Load it with the core loader for its kind."
        raise ModelsmithError(f"{os.path.basename(path)} has no denoiser, so it is not a checkpoint to sample from." + hint)
    if report["layout"] not in ("checkpoint",):
        raise ModelsmithError(
            f"{os.path.basename(path)} is {a(report['family'])} {report['layout']}, not a single-file checkpoint: "
            f"load it with a diffusion-model loader (or the Anima loader).")
    if report.get("quantization"):
        from ..compat.quantized import check_core_reads
        check_core_reads(report["quantization"], os.path.basename(path))
    sd, metadata = common.read_state_dict(path, with_metadata=True)
    emb = folder_paths.get_folder_paths("embeddings")
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    if comfy.model_detection.model_config_from_unet(sd, prefix, metadata=metadata) is not None:
        out = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True,
                                                    embedding_directory=emb, metadata=metadata)
        model, clip, vae = out[0], out[1], out[2]
    elif sized.can_build(report["family"]):
        model, clip, vae = sized.load_unet_checkpoint(sd, report["family"], embedding_directory=emb)
    else:
        raise ModelsmithError(f"{os.path.basename(path)}: ComfyUI cannot build a model for this "
                              f"{report['family']} file (unrecognised configuration).")
    if not report["components"]["vae"]:
        vae = None
    return model, clip, vae, report


def resolve_prediction(report: dict, choice: str) -> tuple[str, bool]:
    if choice == "auto":
        pred = report.get("prediction") or "eps"
        return ("v" if pred == "v" else "eps"), bool(report.get("ztsnr")) and pred == "v"
    if choice == "v+ztsnr":
        return "v", True
    return choice, False


class ModelsmithCheckpointLoader(common.LoaderNode):
    DESCRIPTION = ("Loads a single-file checkpoint with the settings its tensors call for: v-prediction and "
                   "zero terminal SNR from the marker keys (or the override), any UNet width, pickles only "
                   "through the allowlist.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (folder_paths.get_filename_list("checkpoints"), {"tooltip": "A checkpoint in models/checkpoints."}),
            "prediction": (PREDICTIONS, {"default": "auto", "tooltip":
                           "auto: from the file's v_pred/ztsnr markers. Override for v-pred files without markers."}),
        }, "hidden": common.HIDDEN_GRAPH}

    def load(self, ckpt_name, prediction="auto", prompt=None, unique_id=None):
        path = common.resolve_model(f"checkpoints/{ckpt_name}", ("checkpoints",))
        rep = core_inspect.inspect_file(path)
        if 2 in common.outputs_used(prompt, unique_id) and rep["layout"] == "checkpoint" \
                and not rep["components"].get("vae"):  # its VAE output is used: say so before loading anything
            raise ModelsmithError(f"{ckpt_name} has no VAE, but this loader's VAE output is connected: connect a "
                                  f"VAELoader's VAE instead")
        model, clip, vae, report = load_checkpoint_file(path, rep)
        pred, ztsnr = resolve_prediction(report, prediction)
        family = report["family"]
        if registry.is_unet(family) and report.get("prediction") in ("eps", "v", None):
            model = apply_prediction(model, pred, ztsnr)
        settings = common.settings_from_report(report, pred, ztsnr)
        if prediction != "auto" and (pred, ztsnr) != (report.get("prediction"), report.get("ztsnr")):
            settings["warnings"].append(f"prediction overridden to {prediction} (file says "
                                        f"{report.get('prediction')}{' ztsnr' if report.get('ztsnr') else ''})")
        if vae is None:
            settings["warnings"].append("This checkpoint has no VAE: connect a VAE loader.")
        return (model, clip, vae, settings)


class ModelsmithSaveCheckpoint:
    DESCRIPTION = "Saves MODEL/CLIP/VAE as one safetensors checkpoint with the v_pred/ztsnr markers written back."
    CATEGORY = "modelsmith/model tools"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",), "filename_prefix": ("STRING", {"default": "checkpoints/modelsmith",
                                                                 "tooltip": "Inside ComfyUI's output folder."})},
            "optional": {"clip": ("CLIP",), "vae": ("VAE",), "settings": (common.SETTINGS,)}}

    def save(self, model, filename_prefix, clip=None, vae=None, settings=None):
        from .sampling_patch import sampling_of
        from ..core.files import safe_filename
        pred, z = sampling_of(model)
        extra = {}
        if pred == "v":
            extra["v_pred"] = torch.tensor([])
        if z:
            extra["ztsnr"] = torch.tensor([])
        out_dir = folder_paths.get_output_directory()
        full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        name = safe_filename(f"{filename}_{counter:05}_.safetensors")
        path = os.path.join(full_folder, name)
        metadata = {"modelspec.prediction_type": "v" if pred == "v" else "epsilon"}
        tmp = path + ".tmp"
        comfy.sd.save_checkpoint(tmp, model, clip, vae, metadata=metadata, extra_keys=extra)
        os.replace(tmp, path)
        return {"ui": {"text": [path]}}


TE_SLOTS = ("text_encoder_1", "text_encoder_2", "text_encoder_3")


def _device() -> dict:
    """The facts companions.precision_order weighs, asked of ComfyUI's model management."""
    import comfy.model_management as mm
    dev = mm.get_torch_device()
    if dev.type == "cpu":
        return {"gpu": False}
    return {"gpu": True, "vram_gb": mm.get_total_memory(dev) / 2**30, "bf16": bool(mm.should_use_bf16(dev))}


def _library() -> list[dict]:
    """The text encoders and VAEs of ComfyUI's model folders, from the Model Doctor's header cache."""
    from ..core import doctor
    from .doctor_routes import cache_path, model_folders
    folders = {k: v for k, v in model_folders().items() if k in ("text_encoders", "vae")}
    return doctor.scan(folders, doctor.Cache(cache_path()))


def _companion_path(folder: str, name: str) -> str:
    from ..core.safetensors_io import file_format
    path = common.resolve_model(f"{folder}/{name}", (folder,))
    if file_format(path) == "pickle":  # core's loaders would unpickle it in the server process
        raise ModelsmithError(f"{name} is a pickle (.ckpt/.pt/.bin): convert it to safetensors first "
                              f"(Model Doctor's convert fix, or `modelsmith convert`), then pick the new file")
    return path


def load_with_companions(model_file: str, overrides: dict, prediction: str = "auto"):
    """(MODEL, CLIP, VAE, SETTINGS) of any model file with the text encoders and VAE its family needs,
    each loaded by core's own loader functions with the CLIP type the registry names."""
    from ..core import companions
    path = common.resolve_model(model_file)
    rep = core_inspect.inspect_file(path)
    rec = registry.get(rep["family"])
    name = os.path.basename(path)
    if rep["layout"] is None or not rep["components"].get("denoiser") or rec is None:
        what = f"{a(rep['family'])} {rep.get('kind') or 'file'}" if rep["family"] != "unknown" else "not a model this pack knows"
        raise ModelsmithError(f"{name} is {what}, not a diffusion model or checkpoint to sample from.")
    plan = companions.plan(rec.id, rep.get("variant"), rep["components"], _library(), _device(), overrides)
    if plan["missing"]:  # before anything is loaded
        raise ModelsmithError(companions.missing_sentence(name, rec.label, plan["missing"]))
    te_paths = [_companion_path("text_encoders", t["name"]) for t in plan["text_encoders"]]
    vae_path = _companion_path("vae", plan["vae"]["name"]) if plan["vae"] else None
    clip_type = getattr(comfy.sd.CLIPType, plan["clip_type"].upper(), None)
    if te_paths and clip_type is None:  # asked of the running core: it has no loader for these encoders
        raise ModelsmithError(f"This ComfyUI has no '{plan['clip_type']}' text encoder type, which {rec.label} "
                              f"needs: update ComfyUI to load {name}.")
    lines = []
    folder, _, rel = model_file.partition("/")
    if rec.pack_loader and folder == "diffusion_models":  # the family's own loader: its checks and fallbacks
        from . import NODE_CLASS_MAPPINGS
        if len(plan["text_encoders"]) != 1 or not plan["vae"]:
            raise ModelsmithError(f"{name} is {rec.label}: it needs its text encoder and its VAE (none is not an option)")
        loader = NODE_CLASS_MAPPINGS[rec.pack_loader]()
        model, clip, vae, settings = loader.load(rel, plan["text_encoders"][0]["name"], plan["vae"]["name"])
        settings["report"] = "; ".join(plan["notes"] + [settings.get("report", "")])
        return model, clip, vae, settings
    if rep["layout"] == "checkpoint":
        model, clip, vae, rep = load_checkpoint_file(path, rep)
        lines.append(f"model: {name} (checkpoint{' with its own text encoders' if clip is not None else ''})")
    else:
        if rep.get("quantization"):
            from ..compat.quantized import check_core_reads
            check_core_reads(rep["quantization"], name)
        from ..core.safetensors_io import file_format
        if file_format(path) == "pickle":  # through the pack's child process, never unpickled here
            sd, metadata = common.read_state_dict(path, with_metadata=True)
            model = comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
        else:
            try:
                model = comfy.sd.load_diffusion_model(path)
            except RuntimeError as e:
                if "detect model type" not in str(e):
                    raise
                model = None
        if model is None:
            raise ModelsmithError(f"{name}: this ComfyUI cannot build a model for this {rec.label} file "
                                  f"(its configuration is not one core detects).")
        clip = vae = None
        lines.append(f"model: {name} ({rec.label} diffusion model)")
    if te_paths:
        clip = comfy.sd.load_clip(ckpt_paths=te_paths, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                  clip_type=clip_type)
        lines.append(f"text encoders as '{plan['clip_type']}'")
    if vae_path:
        sd, metadata = comfy.utils.load_torch_file(vae_path, return_metadata=True)
        vae = comfy.sd.VAE(sd=sd, metadata=metadata)
        if hasattr(vae, "throw_exception_if_invalid"):
            vae.throw_exception_if_invalid()
    pred, ztsnr = resolve_prediction(rep, prediction)
    if registry.is_unet(rec.id) and rep.get("prediction") in ("eps", "v", None):
        model = apply_prediction(model, pred, ztsnr)
    settings = common.settings_from_report(rep, pred, ztsnr)
    settings["report"] = "; ".join(lines + plan["notes"])
    settings["files"] = {"text_encoders": [t["name"] for t in plan["text_encoders"]],
                         "vae": plan["vae"]["name"] if plan["vae"] else None, "clip_type": plan["clip_type"]}
    return model, clip, vae, settings


class ModelsmithLoadAny(common.LoaderNode):
    DESCRIPTION = ("Loads any model from one file: a checkpoint or a diffusion model of any family the pack knows, "
                   "with the text encoders and VAE its family needs found in the model folders by their headers, "
                   "the right CLIP type and the recommended settings. A missing file stops it before any loading, "
                   "with the files to get.")

    @classmethod
    def INPUT_TYPES(cls):
        tes = folder_paths.get_filename_list("text_encoders") if common.folder_exists("text_encoders") else []
        vaes = folder_paths.get_filename_list("vae") if common.folder_exists("vae") else []
        slot = (["auto", "none"] + tes, {"default": "auto", "tooltip":
                "auto: the file its family needs from models/text_encoders (by header); none leaves it out "
                "(SD3's T5); or pick one."})
        return {"required": {
            "model_file": (common.model_choices(common.MODEL_FOLDERS), {
                "tooltip": "A checkpoint or diffusion model from models/checkpoints or models/diffusion_models."}),
            **{s: slot for s in TE_SLOTS},
            "vae": (["auto"] + vaes, {"default": "auto", "tooltip":
                    "auto: a VAE of the family's kind from models/vae (a checkpoint's own VAE first); or pick one."}),
            "prediction": (PREDICTIONS, {"default": "auto", "tooltip":
                           "SD/SDXL only. auto: from the file's v_pred/ztsnr markers."}),
        }}

    def load(self, model_file, text_encoder_1="auto", text_encoder_2="auto", text_encoder_3="auto", vae="auto",
             prediction="auto"):
        overrides = {"text_encoder_1": text_encoder_1, "text_encoder_2": text_encoder_2,
                     "text_encoder_3": text_encoder_3, "vae": vae}
        return load_with_companions(model_file, overrides, prediction)


class ModelsmithSettingsForKSampler:
    DESCRIPTION = ("Turns a Modelsmith loader's SETTINGS into core KSampler inputs: the family's recommended steps, "
                   "CFG, sampler and scheduler, an empty latent of the model's own channels and shape at the "
                   "recommended size, and the model with the recommended flow shift (where the family has one).")
    CATEGORY = "modelsmith/sampling"
    RETURN_TYPES = ("MODEL", "LATENT", "INT", "FLOAT", comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS)
    RETURN_NAMES = ("MODEL", "LATENT", "steps", "cfg", "sampler_name", "scheduler")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        def zero(what):
            return ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8 if what != "steps" else 1,
                            "tooltip": f"0: the family's recommended {what}; otherwise this value."})
        return {"required": {"model": ("MODEL",), "settings": (common.SETTINGS,),
                             "width": zero("width"), "height": zero("height"), "steps": zero("steps"),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."})}}

    def apply(self, model, settings, width=0, height=0, steps=0, batch_size=1):
        import comfy.model_management
        import comfy.model_sampling
        rec = dict((settings or {}).get("recommended") or registry.UNKNOWN_SETTINGS)
        family = registry.get((settings or {}).get("family"))
        multiple = family.size_multiple if family else 8
        width = max(multiple, (width or rec["width"]) // multiple * multiple)
        height = max(multiple, (height or rec["height"]) // multiple * multiple)
        shift = rec.get("shift")
        sampling = model.get_model_object("model_sampling")
        if shift and isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):  # its own class and multiplier
            model = model.clone()
            patched = type(sampling)(model.model.model_config)
            patched.set_parameters(shift=shift, multiplier=sampling.multiplier)
            model.add_object_patch("model_sampling", patched)
        fmt = model.get_model_object("latent_format")  # asked of the model: channels, dimensions, downscale
        ratio = getattr(fmt, "spacial_downscale_ratio", 8)
        shape = [batch_size, fmt.latent_channels] + [1] * (getattr(fmt, "latent_dimensions", 2) - 2) \
            + [height // ratio, width // ratio]
        latent = torch.zeros(shape, device=comfy.model_management.intermediate_device())
        sampler = rec["sampler"] if rec["sampler"] in comfy.samplers.KSampler.SAMPLERS else "euler"
        scheduler = rec["scheduler"] if rec["scheduler"] in comfy.samplers.KSampler.SCHEDULERS else "normal"
        return (model, {"samples": latent}, steps or rec["steps"], float(rec["cfg"]), sampler, scheduler)


NODE_CLASS_MAPPINGS = {
    "ModelsmithInspect": ModelsmithInspect,
    "ModelsmithCheckpointLoader": ModelsmithCheckpointLoader,
    "ModelsmithLoadAny": ModelsmithLoadAny,
    "ModelsmithSettingsForKSampler": ModelsmithSettingsForKSampler,
    "ModelsmithSaveCheckpoint": ModelsmithSaveCheckpoint,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ModelsmithInspect": "Inspect Model File (Modelsmith)",
    "ModelsmithCheckpointLoader": "Load Checkpoint, Right Settings (Modelsmith)",
    "ModelsmithLoadAny": "Load Model, Right Settings (Modelsmith)",
    "ModelsmithSettingsForKSampler": "Settings for KSampler (Modelsmith)",
    "ModelsmithSaveCheckpoint": "Save Checkpoint with Markers (Modelsmith)",
}
