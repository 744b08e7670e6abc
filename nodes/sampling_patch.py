"""Prediction type and zero-terminal-SNR as a model patch, built from ComfyUI's own sampling classes
(the same objects ComfyUI's ModelSamplingDiscrete node builds)."""
from __future__ import annotations

import comfy.model_sampling


def apply_prediction(model, prediction: str, ztsnr: bool):
    """A clone of `model` sampling with eps or v prediction on the discrete schedule (ZTSNR optional)."""
    kinds = {"eps": comfy.model_sampling.EPS, "v": comfy.model_sampling.V_PREDICTION}
    if prediction not in kinds:
        raise ValueError(f"unknown prediction {prediction!r}")

    class ModelSamplingModelsmith(comfy.model_sampling.ModelSamplingDiscrete, kinds[prediction]):
        pass

    m = model.clone()
    m.add_object_patch("model_sampling", ModelSamplingModelsmith(model.model.model_config, zsnr=ztsnr))
    return m


def sampling_of(model):
    """(prediction, ztsnr) of a MODEL as it will sample."""
    ms = model.get_model_object("model_sampling")
    pred = "v" if isinstance(ms, comfy.model_sampling.V_PREDICTION) else (
        "eps" if isinstance(ms, comfy.model_sampling.EPS) else type(ms).__name__)
    sigmas = getattr(ms, "sigmas", None)
    z = bool(sigmas is not None and float(sigmas[-1]) > 1000.0)
    return pred, z
