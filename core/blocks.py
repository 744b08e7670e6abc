"""Block names for block-weighted merges (reference.md section 8).

SD1: 26 weights BASE, IN00-IN11, M00, OUT00-OUT11. SDXL: 21 weights BASE, IN00-IN08, M00, OUT00-OUT08, VAE.
Cosmos/Anima: BASE, B00..Bnn (one per DiT block), plus the named parts pos_embedder, x_embedder,
t_embedder, t_embedding_norm, final_layer and (Anima) llm_adapter. Everything not in a block
(text encoders, time/label embeddings, `out.`, VAE) is BASE.
"""
from __future__ import annotations

import re

from .errors import UsageError

UNET_PREFIX = "model.diffusion_model."
_IN = re.compile(r"^(?:model\.diffusion_model\.)?input_blocks\.(\d+)\.")
_OUT = re.compile(r"^(?:model\.diffusion_model\.)?output_blocks\.(\d+)\.")
_MID = re.compile(r"^(?:model\.diffusion_model\.)?middle_block\.")
_DIT = re.compile(r"^(?:net\.|model\.diffusion_model\.)?blocks\.(\d+)\.")
_DIT_PARTS = ("pos_embedder", "x_embedder", "t_embedder", "t_embedding_norm", "final_layer", "llm_adapter")
_DIT_PART = re.compile(r"^(?:net\.|model\.diffusion_model\.)?(" + "|".join(_DIT_PARTS) + r")\.")

BLOCK_COUNTS = {"sd1": 12, "sd2": 12, "sdxl": 9}


def block_names(family: str, n_dit_blocks: int = 28) -> list[str]:
    if family in BLOCK_COUNTS:
        n = BLOCK_COUNTS[family]
        names = ["BASE"] + [f"IN{i:02d}" for i in range(n)] + ["M00"] + [f"OUT{i:02d}" for i in range(n)]
        return names + (["VAE"] if family == "sdxl" else [])
    if family in ("anima", "cosmos-predict2"):
        parts = list(_DIT_PARTS) if family == "anima" else list(_DIT_PARTS[:-1])
        return ["BASE"] + [f"B{i:02d}" for i in range(n_dit_blocks)] + parts
    raise UsageError(f"block weights are not defined for {family} models")


def block_of(key: str, family: str) -> str:
    if family in BLOCK_COUNTS:
        m = _IN.match(key)
        if m:
            return f"IN{int(m.group(1)):02d}"
        m = _OUT.match(key)
        if m:
            return f"OUT{int(m.group(1)):02d}"
        if _MID.match(key):
            return "M00"
        if family == "sdxl" and key.startswith("first_stage_model."):
            return "VAE"
        return "BASE"
    if family in ("anima", "cosmos-predict2"):
        m = _DIT.match(key)
        if m:
            return f"B{int(m.group(1)):02d}"
        m = _DIT_PART.match(key)
        if m:
            return m.group(1)
    return "BASE"


def parse_block_weights(text: str, family: str, n_dit_blocks: int = 28) -> dict:
    """'BASE:0.5,IN00:0.2,...' or a plain list of one number per block name, in block order."""
    names = block_names(family, n_dit_blocks)
    text = (text or "").strip()
    if not text:
        return {}
    items = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
    out = {}
    if all(":" not in t for t in items):
        if len(items) != len(names):
            raise UsageError(f"{family} block weights need {len(names)} numbers ({names[0]}..{names[-1]}), got {len(items)}")
        for n, v in zip(names, items):
            out[n] = _weight(n, v)
        return out
    for t in items:
        name, _, v = t.partition(":")
        name = name.strip()
        if name not in names:
            raise UsageError(f"unknown block {name!r} for {family}; blocks are {', '.join(names)}")
        out[name] = _weight(name, v)
    return out


def _weight(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"block weight for {name} must be a number, got {text.strip()[:40]!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise UsageError(f"block weight for {name} must be a finite number, got {text.strip()[:40]!r}")
    return v
