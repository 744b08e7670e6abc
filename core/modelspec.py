"""ModelSpec metadata (`modelspec.*` header keys) for written checkpoints."""
from __future__ import annotations

import datetime

from . import registry

STABILITY_IMPL = "https://github.com/Stability-AI/generative-models"


def modelspec_for(report: dict, *, title: str, merged_from=None, description=None) -> dict:
    family, pred = report.get("family"), report.get("prediction")
    arch = registry.modelspec_architecture(family, report.get("variant"), pred)
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
