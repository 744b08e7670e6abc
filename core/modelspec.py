"""ModelSpec metadata (`modelspec.*` header keys) for written checkpoints."""
from __future__ import annotations

import datetime

ARCHITECTURE = {
    "sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl-refiner": "stable-diffusion-xl-v1-refiner", "sd3": "stable-diffusion-v3-medium",
    "sd3.5-medium": "stable-diffusion-v3.5-medium", "sd3.5-large": "stable-diffusion-v3.5-large",
    "flux1": "flux-1-dev", "lumina2": "lumina-2", "anima": "anima-preview",
}


STABILITY_IMPL = "https://github.com/Stability-AI/generative-models"


def modelspec_for(report: dict, *, title: str, merged_from=None, description=None) -> dict:
    family, pred = report.get("family"), report.get("prediction")
    arch = ARCHITECTURE.get(family, family or "unknown")
    if family == "sd2" and pred == "v":
        arch = "stable-diffusion-v2-768-v"
    if family == "flux1" and report.get("variant") == "schnell":
        arch = "flux-1-schnell"
    rec = report.get("recommended") or {}
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": "diffusers" if report.get("layout") == "diffusers" else STABILITY_IMPL,
        "modelspec.title": title,
        "modelspec.resolution": f"{rec.get('width', 1024)}x{rec.get('height', 1024)}",
        "modelspec.date": datetime.date.today().isoformat(),
    }
    if pred in ("eps", "v"):
        meta["modelspec.prediction_type"] = "epsilon" if pred == "eps" else "v"
    if merged_from:
        meta["modelspec.merged_from"] = ", ".join(merged_from)
    if description:
        meta["modelspec.description"] = description
    return meta
