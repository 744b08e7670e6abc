"""Block names for block-weighted merges, from the family's registry record (core/registry.py).

UNet families (SD1/SD2/SDXL) use the seed guide's names (reference.md section 8): SD1 26 weights
BASE, IN00-IN11, M00, OUT00-OUT11; SDXL 21: BASE, IN00-IN08, M00, OUT00-OUT08, VAE. Every DiT family
uses the names of core's model-specific merge nodes without their trailing dot (FLUX `img_in`,
`double_blocks.0`, ...; SD3 `joint_blocks.0`; Qwen-Image `transformer_blocks.0`; Lumina / Z-Image
`layers.0`; Cosmos / Anima `blocks.0`, Anima also `llm_adapter`), one name per block the file holds.
Everything in no named block (text encoders, VAE of a DiT checkpoint, keys core names no block for)
is BASE. A weight `a` mixes A*(1-a) + B*a, as the merge's alpha does.
"""
from __future__ import annotations

import re

from . import registry
from .errors import UsageError
from .families import count_indexed

DENOISER_PREFIXES = ("model.diffusion_model.", "net.", "diffusion_model.")
_IN = re.compile(r"^input_blocks\.(\d+)\.")
_OUT = re.compile(r"^output_blocks\.(\d+)\.")


def _record(family):
    f = registry.get(family)
    if f is None:
        raise UsageError(f"block weights are not defined for {family} models")
    return f


def _strip(key: str) -> str:
    for p in DENOISER_PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def block_names(family: str, keys=()) -> list[str]:
    """The block names of a model of `family` whose tensor names are `keys` (their blocks counted)."""
    f = _record(family)
    b = f.blocks
    if b.unet_levels:
        # the file's own count where it has one (an SSD-1B, a refiner's 4 levels), else the record's
        n = count_indexed([_strip(k) for k in keys], "input_blocks") or b.unet_levels
        names = ["BASE"] + [f"IN{i:02d}" for i in range(n)] + ["M00"] + [f"OUT{i:02d}" for i in range(n)]
        return names + (["VAE"] if b.vae else [])
    stripped = [_strip(k) for k in keys]
    present = {k.split(".", 1)[0] for k in stripped}
    names = ["BASE"] + [p for p in b.head if p in present]
    for stem in b.indexed:
        names += [f"{stem}.{i}" for i in range(count_indexed(stripped, stem))]
    return names + [p for p in b.tail if p in present]


def block_of(key: str, family: str) -> str:
    f = _record(family)
    b = f.blocks
    if b.unet_levels:
        if b.vae and key.startswith("first_stage_model."):
            return "VAE"
        if key.startswith(("first_stage_model.", "cond_stage_model.", "conditioner.", "model_ema.")):
            return "BASE"
        k = _strip(key)
        m = _IN.match(k)
        if m:
            return f"IN{int(m.group(1)):02d}"
        m = _OUT.match(k)
        if m:
            return f"OUT{int(m.group(1)):02d}"
        return "M00" if k.startswith("middle_block.") else "BASE"
    if key.startswith(("first_stage_model.", "vae.", "text_encoders.", "conditioner.", "cond_stage_model.")):
        return "BASE"
    k = _strip(key)
    top, _, rest = k.partition(".")
    if top in b.indexed:
        idx = rest.split(".", 1)[0]
        return f"{top}.{int(idx)}" if idx.isdigit() else "BASE"
    return top if top in b.head or top in b.tail else "BASE"


def canonical(name: str, family: str) -> str:
    """A block name as given, or the current name of an older alias (Anima/Cosmos `B03` -> `blocks.3`)."""
    for pat, repl in registry.compiled_aliases(_record(family)):
        m = pat.match(name)
        if m:
            return repl.format(*(str(int(g)) if g.isdigit() else g for g in m.groups()))
    return name


def parse_block_weights(text: str, family: str, keys=()) -> dict:
    """'BASE:0.5,IN00:0.2,...' or a plain list of one number per block name, in block order."""
    names = block_names(family, keys)
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
        name, _, v = t.rpartition(":")
        name = canonical(name.strip(), family)
        if name not in names:
            shown = ", ".join(names) if len(names) <= 40 else ", ".join(names[:20] + ["...", *names[-5:]])
            raise UsageError(f"unknown block {name!r} for this {family} model; blocks are {shown}")
        out[name] = _weight(name, v)
    return out


def parse_for_file(text: str, path: str) -> dict:
    """Block weights for the model in `path` (its family and block counts read from its header)."""
    from .inspect import inspect_file
    from .stream import Reader
    if not (text or "").strip():
        return {}
    family = inspect_file(path)["family"]
    if path.lower().endswith(".safetensors"):
        with Reader(path) as r:
            keys = list(r.keys())
    else:
        from .pickle_child import pickle_table
        keys = list(pickle_table(path)[0])
    return parse_block_weights(text, family, keys)


def _weight(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"block weight for {name} must be a number, got {text.strip()[:40]!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise UsageError(f"block weight for {name} must be a finite number, got {text.strip()[:40]!r}")
    return v
