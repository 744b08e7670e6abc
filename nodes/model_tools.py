"""Model-tool nodes: merge and convert checkpoints, streaming, inside ComfyUI's folders."""
from __future__ import annotations

import os

import comfy.utils
import folder_paths

from ..core.blocks import parse_for_file
from ..core.convert import run_convert
from ..core.errors import ModelsmithError
from ..core.files import safe_filename
from ..core.inspect import inspect_file
from ..core.merge import METHODS, Recipe, run_merge
from ..core.stream import check_output_path
from .common import model_file_choices, resolve_model

DESTINATIONS = ["output/checkpoints", "models/checkpoints"]


def _numbered(folder: str, name: str, companions=()) -> str:
    """`name`, or the first free `stem_00001.ext`, `stem_00002.ext` ... as ComfyUI's save nodes number
    their outputs (a name is taken when it or one of its companion files exists, links included)."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 0
    while any(os.path.lexists(os.path.join(folder, candidate + c)) for c in ("",) + tuple(companions)):
        n += 1
        if n > 99999:
            raise ModelsmithError(f"no free numbered name left for {name} in {folder}")
        candidate = f"{stem}_{n:05d}{ext}"
    return candidate


def output_path(name: str, destination: str, keep_name=False, overwrite=False, companions=()) -> str:
    """A confined output path: plain file names only, inside ComfyUI's output or checkpoints folder.
    Unless `overwrite`, a taken name is numbered like ComfyUI's own save nodes do."""
    if not name or "/" in name or "\\" in name or ".." in name or os.path.isabs(name) or name.startswith("~"):
        raise ModelsmithError(f"output name {name!r}: give a plain file name (no folders, '..' or absolute paths)")
    if not keep_name:
        name = safe_filename(name)
    if not name.lower().endswith(".safetensors"):
        name += ".safetensors"
    if destination == "models/checkpoints":
        folder = folder_paths.get_folder_paths("checkpoints")[0]
    elif destination == "models/diffusion_models":
        folder = folder_paths.get_folder_paths("diffusion_models")[0]
    elif destination == "output/checkpoints":
        folder = os.path.join(folder_paths.get_output_directory(), "checkpoints")
    else:
        raise ModelsmithError(f"unknown destination {destination!r}")
    os.makedirs(folder, exist_ok=True)
    if not overwrite:
        name = _numbered(folder, name, companions)
    roots = [folder_paths.get_output_directory()] + list(folder_paths.get_folder_paths("checkpoints")) + \
        (list(folder_paths.get_folder_paths("diffusion_models")) if destination == "models/diffusion_models" else [])
    return check_output_path(os.path.join(folder, name), allowed_roots=roots, overwrite=overwrite)


def _progress_bar(total_guess=1):
    pbar = comfy.utils.ProgressBar(total_guess)

    def cb(done, total):
        pbar.update_absolute(done, total)
    return cb


def _ckpts():
    return folder_paths.get_filename_list("checkpoints")


class ModelsmithMergeCheckpoints:
    DESCRIPTION = ("Merges checkpoint files tensor by tensor (RAM stays small): weighted sum, add difference, TIES, "
                   "DARE, SLERP, with optional block weights; saves the recipe JSON next to the result.")
    CATEGORY = "modelsmith/model tools"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "merge"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        files = _ckpts()
        return {"required": {
            "model_a": (files, {"tooltip": "A: the model merged into; its keys and markers are kept, and its dtype "
                                          "unless `dtype` says otherwise."}),
            "model_b": (files, {"tooltip": "B: weighted_sum/slerp: blended into A by alpha; add_difference/ties/dare: "
                                          "the tuned model whose difference from C is added to A."}),
            "model_c": (["none"] + files, {"default": "none", "tooltip":
                        "C: add_difference/ties/dare only: the base model B was trained from (A + alpha * (B - C))."}),
            "method": (sorted(METHODS), {"default": "weighted_sum"}),
            "alpha": ("FLOAT", {"default": 0.5, "min": -1.0, "max": 2.0, "step": 0.01, "tooltip": "B's share (M)."}),
            "block_weights": ("STRING", {"default": "", "multiline": True, "tooltip":
                              "Optional: 'BASE:0.5,IN00:0.2,...' (SD1 26, SDXL 21 names), core's merge-node names for DiT "
                              "families ('double_blocks.0:0.3' FLUX, 'joint_blocks.0' SD3, 'layers.0' Lumina/Z-Image, "
                              "'blocks.0' Cosmos/Anima), or one number per block; a wrong name lists them all."}),
            "density": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "TIES: share kept."}),
            "drop": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip": "DARE: drop probability."}),
            "dtype": (["same as A", "fp16", "bf16", "fp32"], {"default": "same as A", "tooltip":
                      "The output's dtype: A's by default (as the CLI and README say), or fp16/bf16/fp32."}),
            "output_name": ("STRING", {"default": "merged", "tooltip": "A plain file name (ASCII, no spaces is safest)."}),
            "destination": (DESTINATIONS, {"default": "output/checkpoints"}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }, "optional": {
            # named for what it seeds, and not `seed`: the frontend gives every `seed` widget an automatic
            # "randomize after each run", which would make each Run a different merge
            "dare_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip":
                          "DARE: the seed of its random drop (same seed, same merge)."}),
        }}

    def merge(self, model_a, model_b, model_c, method, alpha, block_weights, density, drop, dtype, output_name,
              destination, overwrite, dare_seed=0):
        paths = [folder_paths.get_full_path_or_raise("checkpoints", n) for n in (model_a, model_b)]
        if model_c != "none":
            paths.append(folder_paths.get_full_path_or_raise("checkpoints", model_c))
        try:
            blocks = parse_for_file(block_weights, paths[0])
        except ValueError as e:
            raise ModelsmithError(str(e)) from None
        recipe = Recipe(method=method, inputs=paths, alpha=alpha, blocks=blocks, density=density, drop=drop, seed=dare_seed,
                        dtype=None if dtype == "same as A" else dtype)
        out = output_path(output_name, destination, overwrite=overwrite, companions=(".recipe.json",))
        rep = run_merge(recipe, out, overwrite=overwrite, progress=_progress_bar())
        counts = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in rep["counts"].items())
        text = "\n".join([f"wrote {out}", f"tensors: {counts}", f"recipe: {out}.recipe.json"] +
                          [f"warning: {w}" for w in rep["warnings"]])
        return {"ui": {"text": [text]}, "result": (out,)}


class ModelsmithConvertCheckpoint:
    DESCRIPTION = ("Prunes and converts a checkpoint for distribution: safetensors, fp16/bf16/fp32, EMA drop/only, "
                   "VAE strip or bake-in, ModelSpec metadata with hash; .ckpt read only through the allowlist.")
    CATEGORY = "modelsmith/model tools"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "convert"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (_ckpts(),),
            "dtype": (["fp16", "bf16", "fp32"], {"default": "fp16"}),
            "ema": (["drop", "keep", "only"], {"default": "drop", "tooltip": "only: use the EMA weights (emaonly)."}),
            "vae": (["keep", "strip"] + folder_paths.get_filename_list("vae"), {"default": "keep",
                    "tooltip": "Keep the baked-in VAE, strip it, or bake in a VAE from models/vae."}),
            "output_name": ("STRING", {"default": "converted"}),
            "destination": (DESTINATIONS, {"default": "output/checkpoints"}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }}

    def convert(self, ckpt_name, dtype, ema, vae, output_name, destination, overwrite):
        src = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        if vae not in ("keep", "strip"):
            vae = folder_paths.get_full_path_or_raise("vae", vae)
        out = output_path(output_name, destination, overwrite=overwrite)
        rep = run_convert(src, out, dtype=dtype, ema=ema, vae=vae, overwrite=overwrite, progress=_progress_bar())
        text = f"wrote {out} ({rep['tensors']} tensors, {rep['dropped_ema']} EMA tensors dropped)"
        return {"ui": {"text": [text]}, "result": (out,)}


class ModelsmithBakeLoras:
    DESCRIPTION = ("Bakes up to three LoRAs (LoRA, LoCon, LoHa, LoKr; kohya, PEFT, diffusion_model, net names; "
                   "text-encoder parts into the file's text encoders) into a new checkpoint or diffusion model, "
                   "streaming; the weights equal ComfyUI's LoRA loader at the same strengths. A LoRA for another "
                   "model is refused before anything is written.")
    CATEGORY = "modelsmith/model tools"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "bake"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        loras = ["none"] + folder_paths.get_filename_list("loras")
        req = {"model_file": (model_file_choices(), {"tooltip": "The model to bake the LoRAs into."})}
        for i in (1, 2, 3):
            req[f"lora_{i}"] = (loras, {"default": "none", "tooltip": f"LoRA {i} (models/loras), or none."})
            req[f"strength_{i}"] = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                              "tooltip": f"LoRA {i}'s strength, as LoraLoader's strength_model."})
        req.update(output_name=("STRING", {"default": "baked", "tooltip": "The new file's name (.safetensors added)."}),
                   destination=(DESTINATIONS, {"default": "output/checkpoints", "tooltip": "Where the new file goes."}),
                   overwrite=("BOOLEAN", {"default": False, "tooltip": "Replace a file of that name."}))
        return {"required": req}

    def bake(self, model_file, output_name, destination, overwrite, **kw):
        from ..core.bake import bake
        src = resolve_model(model_file)
        loras = [(folder_paths.get_full_path_or_raise("loras", kw[f"lora_{i}"]), kw[f"strength_{i}"])
                 for i in (1, 2, 3) if kw.get(f"lora_{i}", "none") != "none"]
        if not loras:
            raise ModelsmithError("Bake LoRAs: choose at least one LoRA")
        out = output_path(output_name, destination, overwrite=overwrite)
        rep = bake(src, loras, out, overwrite=overwrite, progress=_progress_bar())
        text = "\n".join([f"wrote {out} ({rep['layers']} layers changed)"] + [f"warning: {w}" for w in rep["warnings"]])
        return {"ui": {"text": [text]}, "result": (out,)}


class ModelsmithPublish:
    DESCRIPTION = ("Prepares a model for uploading, as the seed guide advises: a folder in output/publish with the "
                   "model in fp16, EMA pruned, safetensors, under an ASCII name, with ModelSpec metadata (title, "
                   "architecture, prediction, resolution, licence, sha256), and a Hugging Face model card "
                   "(README.md). Shows the upload command; never runs it, never overwrites.")
    CATEGORY = "modelsmith/model tools"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("folder",)
    FUNCTION = "publish"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.publish import LICENSES
        return {"required": {
            "ckpt_name": (folder_paths.get_filename_list("checkpoints"), {"tooltip": "A checkpoint in models/checkpoints."}),
            "title": ("STRING", {"default": "", "tooltip": "The model's name (empty: the file's)."}),
            "license": (list(LICENSES), {"default": "other", "tooltip": "The licence id for the model card."}),
            "folder_name": ("STRING", {"default": "my-model", "tooltip": "The folder in output/publish to write."}),
        }}

    def publish(self, ckpt_name, title, license, folder_name):
        from ..core.publish import publish
        src = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        folder = os.path.join(folder_paths.get_output_directory(), "publish", _plain_name(folder_name))
        rep = publish(src, folder, title=title.strip() or None, license=license, progress=_progress_bar())
        text = f"wrote {rep['model']}\nwrote {rep['card']}\nsha256 {rep['sha256']}\nupload (not run): {rep['upload']}"
        return {"ui": {"text": [text]}, "result": (folder,)}


def _plain_name(name: str) -> str:
    from ..core.files import safe_filename
    name = (name or "").strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ModelsmithError(f"folder name {name!r}: give a plain folder name (no '/', '..' or absolute paths)")
    return safe_filename(name)


NODE_CLASS_MAPPINGS = {
    "ModelsmithMergeCheckpoints": ModelsmithMergeCheckpoints,
    "ModelsmithConvertCheckpoint": ModelsmithConvertCheckpoint,
    "ModelsmithPublish": ModelsmithPublish,
    "ModelsmithBakeLoras": ModelsmithBakeLoras,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ModelsmithMergeCheckpoints": "Merge Checkpoints, Streaming (Modelsmith)",
    "ModelsmithConvertCheckpoint": "Convert / Prune Checkpoint (Modelsmith)",
    "ModelsmithPublish": "Prepare Model for Publishing (Modelsmith)",
    "ModelsmithBakeLoras": "Bake LoRAs into Model (Modelsmith)",
}
