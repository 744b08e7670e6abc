"""Helpers shared by the node modules: model folders, file picking, the SETTINGS type."""
from __future__ import annotations

import os

import folder_paths

from ..core.errors import ModelsmithError

SETTINGS = "MODELSMITH_SETTINGS"
MODEL_FOLDERS = ("checkpoints", "diffusion_models")


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
    rec = dict(report.get("recommended") or {})
    return {"family": report.get("family"), "variant": report.get("variant"), "prediction": prediction,
            "ztsnr": bool(ztsnr), "recommended": rec, "warnings": list(report.get("warnings", [])),
            "file_prediction": report.get("prediction"), "file_ztsnr": report.get("ztsnr", False)}
