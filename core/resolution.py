"""Image sizes: aspect-ratio presets and the nearest bucket for a megapixel budget.

Shared by the Anima and SDXL samplers. SDXL trains on buckets in multiples of 64 around 1 MP;
Anima (DiT, patch 2 on an 8x VAE) wants multiples of 16 at ~1 MP."""
from __future__ import annotations

import math

from . import registry

# the size presets of a family are its registry record's `sizes` (name, width, height)
SDXL_PRESETS = registry.get("sdxl").sizes
ANIMA_PRESETS = registry.get("anima").sizes


def preset_labels(presets) -> list[str]:
    return [f"{name} ({w}x{h})" for name, w, h in presets] + ["custom"]


def preset_size(label: str, presets, custom=(1024, 1024)) -> tuple[int, int]:
    """(width, height) of a preset label from preset_labels(), or `custom` for 'custom'."""
    if label == "custom":
        return custom
    for name, w, h in presets:
        if label == name or label.startswith(name + " "):
            return w, h
    raise ValueError(f"unknown size preset {label!r}")


def nearest_size(aspect: float, megapixels: float = 1.0, multiple: int = 64) -> tuple[int, int]:
    """The (width, height) in multiples of `multiple` closest to `aspect` (w/h) at ~`megapixels`."""
    if aspect <= 0 or megapixels <= 0 or multiple <= 0:
        raise ValueError("aspect, megapixels and multiple must be positive")
    area = megapixels * 1024 * 1024
    best = None
    h0 = math.sqrt(area / aspect)
    for h in {max(multiple, int(h0 // multiple) * multiple + d * multiple) for d in range(-2, 4)}:
        w_exact = aspect * h
        for w in {max(multiple, int(w_exact // multiple) * multiple), max(multiple, math.ceil(w_exact / multiple) * multiple)}:
            # aspect and area errors weigh alike (log scale)
            score = abs(math.log((w / h) / aspect)) + abs(math.log(w * h / area))
            if best is None or score < best[0]:
                best = (score, (w, h))
    return best[1]


def nearest_bucket(aspect: float, buckets=SDXL_PRESETS) -> tuple[int, int]:
    """The preset bucket whose aspect ratio is closest to `aspect` (w/h)."""
    _, w, h = min(buckets, key=lambda b: abs(math.log((b[1] / b[2]) / aspect)))
    return w, h


def snap(width: int, height: int, multiple: int) -> tuple[int, int]:
    """Round a custom size to the nearest multiple (at least one multiple)."""
    return (max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple))
