"""A LoRA loader that checks the LoRA against the model it is applied to.

ComfyUI's own LoraLoaderModelOnly applies whatever names match and logs the rest ("lora key not
loaded") to the console: a LoRA made for another family or Anima depth then applies partially and
silently. This node reads what the LoRA targets (core/lora.py), applies it through ComfyUI's own
LoRA code (comfy.lora key map, load_lora, ModelPatcher.add_patches, so every LoRA/LyCORIS algorithm
core knows works), renames `net.` keys that (and `lycoris_` keys) that core does not map on this model, and reports the mismatch in the node.
"""
from __future__ import annotations

import logging
import os

import comfy.lora
import folder_paths

from ..core import lora as core_lora
from ..core.errors import ModelsmithError

log = logging.getLogger("modelsmith")

from ..compat.family import family_of as model_family  # noqa: E402  (the one runtime mapping)


def read_lora(path: str) -> dict:
    from .common import read_state_dict  # a pickle is unpickled in the limited child, never here
    return read_state_dict(path)


# names core maps on some models only: renamed to a style it maps on all when it does not know them here
_RENAMES = (("net.", "diffusion_model."), ("lycoris_", "lora_unet_"))


def _rename(key: str, key_map: dict) -> str:
    parts = core_lora.split_key(key)
    if parts is None:
        return key
    module = key[: len(key) - len(parts[2])]
    if module in key_map:
        return key
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))


def check_values(sd: dict, name: str) -> None:
    """Alphas must be one finite, non-zero number; a LoRA pair must have a rank (down rows = up columns > 0)."""
    import math
    for k, v in sd.items():
        if k.endswith(".alpha"):
            if v.numel() != 1:
                raise ModelsmithError(f"{name}: {k} holds {v.numel()} numbers; an alpha is one number")
            a = float(v.float().reshape(()))
            if not math.isfinite(a) or a == 0:
                raise ModelsmithError(f"{name}: {k} is {a}: an alpha must be a finite, non-zero number")
        for down_s, up_s in _PAIRS:
            if k.endswith(down_s):
                up = sd.get(k[: -len(down_s)] + up_s)
                rank = v.shape[0] if v.ndim else 0
                if rank == 0:
                    raise ModelsmithError(f"{name}: {k[: -len(down_s)]} has rank 0 (no low-rank factor)")
                if up is not None and (up.ndim < 2 or up.shape[1] != rank):
                    raise ModelsmithError(f"{name}: {k[: -len(down_s)]}: its factors disagree on the rank "
                                          f"({tuple(v.shape)} and {tuple(up.shape)})")


def dropped_layers(sd: dict, key_map: dict, model) -> list[str]:
    """The LoRA pairs whose product does not fit the weight they target: ComfyUI's LoRA code skips
    them ("shape mismatch, weight not merged"), so they are named instead of silently lost."""
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    out = []
    for k, down in sd.items():
        for down_s, up_s in _PAIRS:
            if not k.endswith(down_s):
                continue
            module = k[: -len(down_s)]
            up, target = sd.get(module + up_s), key_map.get(module)
            target = target[0] if isinstance(target, tuple) else target
            if up is None or target not in shapes:
                continue
            w = shapes[target]
            if len(w) < 2 or (up.shape[0], down.shape[1]) != (w[0], w[1]):
                out.append(f"{module} ({up.shape[0]}x{down.shape[1]} for a {'x'.join(map(str, w))} weight)")
    return out


def apply_checked_lora(model, path: str, strength: float):
    """(patched clone of `model`, report lines) for the LoRA file at `path`."""
    sd = read_lora(path)
    check_values(sd, os.path.basename(path))
    info = core_lora.analyse({k: (str(v.dtype), tuple(v.shape)) for k, v in sd.items()},
                             values=lambda n: sd[n].float().flatten().tolist() if sd[n].numel() <= 16 else None)
    name = os.path.basename(path)
    if info is None:
        raise ModelsmithError(f"{name} holds no LoRA/LyCORIS tensors (lora_down/lora_A/lokr/hada names); pick a LoRA file.")
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    renamed = {_rename(k, key_map): v for k, v in sd.items()}
    patches = comfy.lora.load_lora(renamed, key_map, log_missing=False)  # the unmatched ones are reported below
    modules = {}
    for k in renamed:
        parts = core_lora.split_key(k)
        if parts and parts[1] != "kohya-te":
            modules[k[: len(k) - len(parts[2])]] = True
    unmatched = sum(1 for m in modules if m not in key_map)
    family, blocks = model_family(model)
    warnings = core_lora.fit(info, family, blocks, unmatched, len(modules))
    dropped = dropped_layers(renamed, key_map, model)
    if dropped:
        warnings.append(f"{len(dropped)} layers do not fit this model's weights and ComfyUI drops them: "
                        + ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    out = model.clone()
    applied = out.add_patches(patches, strength) if patches else []
    lines = [f"{name}: {core_lora.describe(info)}",
             f"applied to {len(applied)} layers of this {family} model" + (f" ({blocks} blocks)" if blocks else "") +
             f" at strength {strength:g}"]
    for w in warnings:
        log.warning("Modelsmith LoRA %s: %s", name, w)
        lines.append("warning: " + w)
    if not patches:
        raise ModelsmithError(f"{name} matches no layer of this {family} model: " + " ".join(warnings))
    return out, lines


class ModelsmithLoraLoader:
    DESCRIPTION = ("Applies a LoRA (LoRA, LoKr, LoHa; kohya, diffusion_model., net. or LyCORIS names) to the model "
                   "through ComfyUI's own LoRA code, and says in the node when it was made for another family or "
                   "Anima depth, or when some of its layers match nothing.")
    CATEGORY = "modelsmith/loaders"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("MODEL", "report")
    FUNCTION = "load"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to apply the LoRA to."}),
            "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": "A LoRA from ComfyUI's models/loras folder."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                         "tooltip": "How strongly the LoRA changes the model (1.0: as trained)."}),
        }}

    def load(self, model, lora_name, strength_model):
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        if strength_model == 0:
            return {"ui": {"text": [f"{lora_name}: strength 0, not applied"]}, "result": (model, "strength 0")}
        out, lines = apply_checked_lora(model, path, strength_model)
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (out, text)}


NODE_CLASS_MAPPINGS = {"ModelsmithLoraLoader": ModelsmithLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"ModelsmithLoraLoader": "Load LoRA (checked) (Modelsmith)"}
