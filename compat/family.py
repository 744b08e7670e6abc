"""The one place a loaded ComfyUI model is mapped to a registry family (core/registry.py): by its
config class (and base classes, so a subclass such as SSD-1B or a pack's own config maps too) and
its unet_config, as the registry records name them."""
from __future__ import annotations

from ..core import registry


def family_of(model) -> tuple[str, int | None]:
    """(family id or "unknown", DiT block count or None) of a ComfyUI MODEL (a ModelPatcher) or of
    its BaseModel."""
    base = getattr(model, "model", model)
    dit = getattr(base, "diffusion_model", None)
    blocks = len(dit.blocks) if dit is not None and hasattr(dit, "blocks") and hasattr(dit, "final_layer") else None
    config = getattr(base, "model_config", None)
    names = [c.__name__ for c in type(config).__mro__] if config is not None else []
    family = registry.for_config(names, getattr(config, "unet_config", None) or {})
    if family is None and dit is not None and hasattr(dit, "llm_adapter"):
        family = "anima"  # an Anima built by a config no record names (its adapter says what it is)
    return family or "unknown", blocks
