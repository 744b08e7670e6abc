"""Helpers shared by the node modules: model folders, file picking, the SETTINGS type."""
from __future__ import annotations

import os

import folder_paths

from ..core.errors import ModelsmithError

SETTINGS = "MODELSMITH_SETTINGS"
MODEL_FOLDERS = ("checkpoints", "diffusion_models")


def read_state_dict(path: str, with_metadata: bool = False):
    """A model file's tensors for running it: safetensors through ComfyUI's own reader, a pickle only
    through the pack's limited child process (the server never unpickles a file itself)."""
    import comfy.utils
    from ..core.safetensors_io import file_format
    if file_format(path) == "pickle":
        from ..core.pickle_child import load_state_dict
        sd = load_state_dict(path)
        return (sd, None) if with_metadata else sd
    return comfy.utils.load_torch_file(path, safe_load=True, return_metadata=with_metadata)


def folder_exists(name: str) -> bool:
    return name in folder_paths.folder_names_and_paths


def model_choices(folders=MODEL_FOLDERS) -> list[str]:
    """`folder/name` entries for every model file in the given ComfyUI model folders."""
    out = []
    for folder in folders:
        if not folder_exists(folder):
            continue
        out += [f"{folder}/{name}" for name in folder_paths.get_filename_list(folder)]
    return out or ["(no model files found)"]


def model_file_choices(folders=MODEL_FOLDERS) -> list[str]:
    """`folder/name` choices of every file ComfyUI lists in `folders` (a placeholder when there is none)."""
    files = [f"{folder}/{n}" for folder in folders for n in folder_paths.get_filename_list(folder)]
    return files or ["(no model files found)"]


def resolve_model(choice: str, folders=MODEL_FOLDERS) -> str:
    """Full path of a `folder/name` choice; only names ComfyUI itself lists are accepted."""
    folder, _, name = choice.partition("/")
    if folder not in folders or not folder_exists(folder):
        raise ModelsmithError(f"'{choice}': pick a file from {', '.join(folders)}")
    if name not in folder_paths.get_filename_list(folder):
        raise ModelsmithError(f"'{name}' is not in ComfyUI's {folder} folder (refresh the node list?)")
    path = folder_paths.get_full_path(folder, name)
    if path is None or not os.path.isfile(path):
        raise ModelsmithError(f"'{name}' was not found in ComfyUI's {folder} folder")
    return path


def settings_from_report(report: dict, prediction: str, ztsnr: bool) -> dict:
    """SETTINGS for the prediction the model is loaded with (an override takes its variant's settings)."""
    from ..core import registry
    rec = (registry.settings(report["family"], report.get("variant"), prediction) if registry.get(report.get("family"))
           else dict(report.get("recommended") or {}))
    return {"family": report.get("family"), "variant": report.get("variant"), "prediction": prediction,
            "ztsnr": bool(ztsnr), "recommended": rec, "warnings": list(report.get("warnings", [])),
            "file_prediction": report.get("prediction"), "file_ztsnr": report.get("ztsnr", False)}


class LoaderNode:
    """What every Modelsmith loader node gives: the model, its text encoders, its VAE and SETTINGS."""
    CATEGORY = "modelsmith/loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", SETTINGS)
    RETURN_NAMES = ("MODEL", "CLIP", "VAE", "SETTINGS")
    FUNCTION = "load"


# hidden inputs a node asks for to see the graph it runs in (which of its outputs are used)
HIDDEN_GRAPH = {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}


def outputs_used(prompt, unique_id) -> set:
    """Indices of this node's outputs that some node of the queued graph reads."""
    used = set()
    if not isinstance(prompt, dict) or unique_id is None:
        return used
    uid = str(unique_id)
    for node in prompt.values():
        for v in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if isinstance(v, list) and len(v) == 2 and str(v[0]) == uid and isinstance(v[1], int):
                used.add(v[1])
    return used


def input_linked(prompt, unique_id, name: str) -> bool:
    """Whether this node's input `name` is connected to another node's output in the queued graph."""
    if not isinstance(prompt, dict) or unique_id is None:
        return False
    v = ((prompt.get(str(unique_id)) or {}).get("inputs") or {}).get(name)
    return isinstance(v, list) and len(v) == 2


def check_conditioning(value, name: str, prompt=None, unique_id=None, hint: str = ""):
    """A CONDITIONING input that is connected must carry conditioning; None/empty is a user mistake
    (e.g. a Prompt Builder without a CLIP), never a silent fallback."""
    connected_but_none = value is None and input_linked(prompt, unique_id, name)
    if connected_but_none or (value is not None and len(value) == 0):
        raise ModelsmithError(f"the {name} input is connected but carries no conditioning{hint}; connect a CLIP to the "
                              f"node that makes it (e.g. the Prompt Builder's clip input)")
    return value


def check_vae_for_image(vae, prompt, unique_id, image_output: int, node: str):
    """Refuse before any work when the IMAGE output is used but no VAE was given."""
    if vae is None and image_output in outputs_used(prompt, unique_id):
        raise ModelsmithError(f"{node}: its IMAGE output is used but no VAE is connected: connect a VAE "
                              f"(from the loader, or a VAELoader) before sampling")


# Tooltips for inputs that mean the same on every node; a node's own tooltip wins. Every input of every
# Modelsmith node ends up with one (a test reads /object_info).
TOOLTIPS = {
    "model": "The MODEL to work on (from a loader).",
    "clip": "The CLIP (text encoder) from the loader; used to encode the text boxes.",
    "vae": "The VAE from the loader (or a VAELoader); needed to decode images.",
    "positive": "Positive CONDITIONING; when connected it replaces the positive text.",
    "negative": "Negative CONDITIONING; when connected it replaces the negative text.",
    "settings": "SETTINGS from a Modelsmith loader: the file's family, prediction and recommended values.",
    "samples": "The LATENT to decode.",
    "negative_text": "Negative prompt, used with a CLIP when no negative CONDITIONING is connected.",
    "size": "A ~1 MP preset in the model's multiples; 'custom' uses width and height.",
    "width": "Image width in pixels, used when size is custom (rounded to the model's multiple).",
    "height": "Image height in pixels, used when size is custom (rounded to the model's multiple).",
    "steps": "Sampling steps.",
    "cfg": "Classifier-free guidance scale.",
    "sampler_name": "Sampling algorithm.",
    "scheduler": "Noise schedule.",
    "seed": "Noise seed (same seed and settings, same image).",
    "denoise": "1.0 for text-to-image; lower keeps more of latent_image (img2img).",
    "rescale_phi": "CFG rescale strength phi (0.7 recommended with ZTSNR).",
    "ckpt_name": "A checkpoint in models/checkpoints.",
    "model_file": "A model file in models/checkpoints or models/diffusion_models.",
    "dtype": "Precision of the result / of the computation (see the node's description).",
    "method": "Merge method: weighted_sum, add_difference (needs C), ties, dare, slerp.",
    "preset": "Which layers stay in high precision (by model family); auto picks from the file.",
    "output_name": "A plain file name (ASCII, no spaces is safest); a taken name is numbered, never overwritten.",
    "destination": "Where the file goes: ComfyUI's output/checkpoints, models/checkpoints or models/diffusion_models.",
    "overwrite": "Replace an existing file of that name (off: the name gets a number instead).",
}


def with_tooltips(cls):
    """Wrap a node class's INPUT_TYPES so every required/optional input carries a tooltip."""
    original = cls.INPUT_TYPES.__func__

    def INPUT_TYPES(klass):
        spec = original(klass)
        for section in ("required", "optional"):
            for name, entry in list(spec.get(section, {}).items()):
                opts = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
                if not opts.get("tooltip") and name in TOOLTIPS:
                    opts["tooltip"] = TOOLTIPS[name]
                    spec[section][name] = (entry[0], opts) + tuple(entry[2:])
        return spec
    cls.INPUT_TYPES = classmethod(INPUT_TYPES)
    return cls
