"""What a LoRA file targets, from its key names and shapes: key style, algorithm (LoRA, LoKr, LoHa),
family, Anima depth, rank and alpha; and how it fits a given model. Comfy-free: a {name: (dtype,
shape)} table in, plain data out (the Inspect report, the checked LoRA loader and the CLI read it).

Key styles in circulation for DiT LoRAs:
  kohya           lora_unet_blocks_0_self_attn_q_proj.lora_down.weight / .lora_up.weight / .alpha
  diffusion_model diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight (or lora_down/lora_up)
  net             net.blocks.0.self_attn.q_proj.lora_A.weight (the Anima/Cosmos checkpoint names)
  lycoris         lycoris_blocks_0_self_attn_q_proj.lokr_w1 (LyCORIS' own prefix)
LyCORIS LoKr (`lokr_w1`/`lokr_w2`, or their `_a`/`_b` factors) and LoHa (`hada_w1_a` ...) come in the
kohya style too. ComfyUI's own LoRA loader maps kohya, diffusion_model and LyCORIS names on every
model; `net.` names it does not map (upstream behaviour), so Modelsmith's loader renames them.
"""
from __future__ import annotations

import re
from collections import Counter

from . import families as fam
from . import registry

# suffix -> (algorithm, role); role "down" carries the rank in its first dimension
_SUFFIXES = {
    ".lora_down.weight": ("lora", "down"), ".lora_up.weight": ("lora", "up"),
    ".lora_A.weight": ("lora", "down"), ".lora_B.weight": ("lora", "up"),
    ".lora.down.weight": ("lora", "down"), ".lora.up.weight": ("lora", "up"),
    ".lora_mid.weight": ("lora", "mid"), ".dora_scale": ("lora", "dora"),
    ".lokr_w1": ("lokr", "w1"), ".lokr_w2": ("lokr", "w2"), ".lokr_w1_a": ("lokr", "down1"),
    ".lokr_w1_b": ("lokr", "w1b"), ".lokr_w2_a": ("lokr", "down"), ".lokr_w2_b": ("lokr", "w2b"),
    ".lokr_t2": ("lokr", "t2"),
    ".hada_w1_a": ("loha", "up"), ".hada_w1_b": ("loha", "down"), ".hada_w2_a": ("loha", "up2"),
    ".hada_w2_b": ("loha", "down2"), ".hada_t1": ("loha", "t1"), ".hada_t2": ("loha", "t2"),
    ".alpha": (None, "alpha"), ".diff": ("diff", "diff"), ".diff_b": ("diff", "diff_b"),
}
_STYLE_PREFIXES = (("lora_unet_", "kohya"), ("lora_te", "kohya-te"), ("diffusion_model.", "diffusion_model"),
                   ("net.", "net"), ("lycoris_", "lycoris"), ("transformer.", "diffusers"), ("unet.", "diffusers"))
# family signatures on the module path with dots and underscores made alike ("_")
_FAMILY_PATTERNS = (
    ("anima", re.compile(r"^(?:blocks_\d+_(?:self_attn|cross_attn|mlp_layer\d)|llm_adapter_)")),
    ("sdxl-or-sd1", re.compile(r"^(?:input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)_")),
    ("flux", re.compile(r"^(?:double_blocks|single_blocks)_")),
    ("sd3", re.compile(r"^joint_blocks_")),
    ("dit-transformer", re.compile(r"^(?:transformer_blocks|single_transformer_blocks|layers)_\d+_")),
)
_BLOCK = re.compile(r"^blocks[._](\d+)[._]")


def split_key(key: str):
    """(module, style, suffix) of one LoRA tensor name, or None when it is not a LoRA tensor."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            break
    else:
        return None
    for prefix, style in _STYLE_PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix):], style, suffix
    return module, "bare", suffix


def _flat(module: str) -> str:
    return module.replace(".", "_")


def analyse(tensors: dict, values=None) -> dict | None:
    """The LoRA part of a report for a {name: (dtype, shape)} table, or None if it holds no LoRA.

    `values(name)` may return a small tensor's values (to read `.alpha`)."""
    modules: dict[str, dict] = {}
    styles, algos = Counter(), Counter()
    for key, (dtype, shape) in tensors.items():
        parts = split_key(key)
        if parts is None:
            continue
        module, style, suffix = parts
        algo, role = _SUFFIXES[suffix]
        m = modules.setdefault(style + ":" + module, {"module": module, "style": style, "algo": None})
        if algo:
            m["algo"] = algo
        m[role] = (key, tuple(shape))
    if not modules:
        return None
    ranks, alphas, blocks, fams, adapter = Counter(), Counter(), set(), Counter(), False
    widths = Counter()
    for m in modules.values():
        styles[m["style"]] += 1
        algos[m["algo"] or "lora"] += 1
        if m["style"] == "kohya-te":
            continue
        flat = _flat(m["module"])
        for name, pat in _FAMILY_PATTERNS:
            if pat.match(flat):
                fams[name] += 1
                break
        b = _BLOCK.match(m["module"])
        if b:
            blocks.add(int(b.group(1)))
            if flat.startswith(f"blocks_{b.group(1)}_self_attn_q_proj") and "down" in m:
                widths[m["down"][1][-1] if m["algo"] == "lora" else 0] += 1
        if flat.startswith("llm_adapter"):
            adapter = True
        down = m.get("down")
        if m["algo"] == "lora" and down and len(down[1]) >= 2:
            ranks[down[1][0]] += 1
        if "alpha" in m and values is not None:
            v = values(m["alpha"][0])
            if v:
                alphas[round(float(v[0]), 4)] += 1
    family = fams.most_common(1)[0][0] if fams else "unknown"
    if family == "sdxl-or-sd1":
        family = "sd1/sdxl"
    out = {
        "styles": sorted(styles), "algorithms": sorted(algos), "modules": len(modules),
        "text_encoder_modules": styles.get("kohya-te", 0), "family": family,
        "rank": max(ranks) if ranks else None, "ranks": sorted(ranks), "alpha": sorted(alphas) or None,
    }
    if family == "anima":
        depth = max(blocks) + 1 if blocks else 0
        out.update(blocks_touched=sorted(blocks), max_block=depth - 1 if blocks else None, llm_adapter=adapter,
                   anima_depth=depth if depth in fam.ANIMA_DEPTHS else None,
                   width=widths.most_common(1)[0][0] if widths else None)
        out["targets"] = (f"Anima {fam.ANIMA_DEPTHS[depth]} ({depth} blocks)" if depth in fam.ANIMA_DEPTHS
                          else f"an Anima with at least {depth} blocks")
    return out


def fit(lora: dict, model_family: str, model_blocks: int | None, unmatched: int = 0, total: int = 0) -> list[str]:
    """Warnings for applying a LoRA (analyse()'s result) to a model of this family and depth;
    `unmatched` of `total` LoRA modules found no layer in the model."""
    w = []
    lf = lora.get("family")
    fits = registry.lora_fits(lf) if lf else ()
    if fits:
        if model_family not in fits:
            w.append(f"This LoRA is for {lf} models but the model is {model_family}: it does not apply.")
    if lf == "anima" and model_family in fits and model_blocks:
        depth = lora.get("max_block")
        depth = depth + 1 if depth is not None else 0
        if depth > model_blocks:
            w.append(f"This LoRA touches blocks up to {depth - 1} ({lora.get('targets')}) but the model has "
                     f"{model_blocks} blocks: the layers of blocks {model_blocks}..{depth - 1} do not exist here.")
        elif lora.get("anima_depth") and lora["anima_depth"] != model_blocks:
            w.append(f"This LoRA was made for {lora['targets']} but the model has {model_blocks} blocks: "
                     f"blocks {depth}..{model_blocks - 1} stay untouched, so it applies only partially.")
    if unmatched:
        w.append(f"{unmatched} of {total} LoRA layers match no layer of this model and were not applied.")
    return w


def describe(lora: dict) -> str:
    alg = "/".join(a for a in lora["algorithms"])
    rank = f", rank {lora['rank']}" if lora.get("rank") else ""
    alpha = f", alpha {', '.join(str(a) for a in lora['alpha'])}" if lora.get("alpha") else ""
    target = lora.get("targets") or lora["family"]
    return (f"{alg.upper()} for {target}: {lora['modules']} layers in {', '.join(lora['styles'])} names{rank}{alpha}"
            + (", includes llm_adapter" if lora.get("llm_adapter") else ""))
