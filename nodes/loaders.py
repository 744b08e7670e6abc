"""Loader nodes: inspect a file, load a checkpoint with the right settings, save it back."""
from __future__ import annotations

import json
import os

import torch

import comfy.model_detection
import comfy.sd
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


class ModelsmithCheckpointLoader:
    DESCRIPTION = ("Loads a single-file checkpoint with the settings its tensors call for: v-prediction and "
                   "zero terminal SNR from the marker keys (or the override), any UNet width, pickles only "
                   "through the allowlist.")
    CATEGORY = "modelsmith/loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", common.SETTINGS)
    RETURN_NAMES = ("MODEL", "CLIP", "VAE", "SETTINGS")
    FUNCTION = "load"

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


NODE_CLASS_MAPPINGS = {
    "ModelsmithInspect": ModelsmithInspect,
    "ModelsmithCheckpointLoader": ModelsmithCheckpointLoader,
    "ModelsmithSaveCheckpoint": ModelsmithSaveCheckpoint,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ModelsmithInspect": "Inspect Model File (Modelsmith)",
    "ModelsmithCheckpointLoader": "Load Checkpoint, Right Settings (Modelsmith)",
    "ModelsmithSaveCheckpoint": "Save Checkpoint with Markers (Modelsmith)",
}
