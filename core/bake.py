"""Bake LoRAs into a model file ("LoRA merging", as the seed guide names it), streaming tensor by tensor.

`bake(model, [(lora, strength), ...], out)` writes a new checkpoint or diffusion model whose weights
are the model's plus each LoRA's change at its strength, as ComfyUI's LoraLoader computes it at run
time (float32, then the weight's own dtype):
  LoRA / LoCon / PEFT   W += s * (alpha / rank) * up @ down        (no alpha: scale 1)
  LoHa                  W += s * (alpha / rank) * (w1a @ w1b) * (w2a @ w2b)
  LoKr                  W += s * scale * kron(w1, w2), w1 / w2 whole or a @ b; scale alpha / rank
                        when a factor is low-rank, else 1
Names: kohya `lora_unet_*` / `lora_te*_*`, `diffusion_model.*`, `net.*`, `lycoris_*`, PEFT `lora_A/B`.
Text-encoder parts go into the file's text encoders (SD1/SD2 `lora_te_`, SDXL `lora_te1_` CLIP-L and
`lora_te2_` OpenCLIP-G, whose q/k/v live in one `in_proj_weight`: each goes into its third).

Before any work a LoRA that does not fit is refused with one sentence: another family, an Anima depth
it does not match, layers the model does not have, shapes that differ, or forms this does not bake
(DoRA, Tucker `lora_mid` / `hada_t` / `lokr_t2`). Every other tensor, the dtypes and the markers are
kept; the LoRAs and strengths are recorded in the metadata (`modelsmith.baked_loras`). Memory: one
model tensor at a time plus the LoRAs."""
from __future__ import annotations

import json
import os
import re

from . import lora as core_lora
from .errors import ModelsmithError
from .families import find_denoiser

UNSUPPORTED = {"mid": "Tucker (lora_mid)", "dora": "DoRA (dora_scale)", "t1": "Tucker (hada_t1)",
               "t2": "Tucker (hada_t2 / lokr_t2)", "diff": "full-weight diffs", "diff_b": "full-weight diffs"}
_TE = re.compile(r"^(\d?)_(text_model_.*)$")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|"
                       r"mlp\.c_fc\.weight|mlp\.c_proj\.weight)$")
# text encoders inside a checkpoint: kohya te index -> (prefix, format)
_TE_PLACES = {"": (("cond_stage_model.transformer.", "hf"), ("cond_stage_model.model.", "openclip")),
              "1": (("conditioner.embedders.0.transformer.", "hf"),),
              "2": (("conditioner.embedders.1.model.", "openclip"),)}


def _read(path: str) -> dict:
    """A LoRA's tensors (small): safetensors read directly, a pickle only through the limited child."""
    from .safetensors_io import file_format
    from .stream import Reader
    if file_format(path) == "pickle":
        from .pickle_child import load_state_dict
        return load_state_dict(path)
    with Reader(path) as r:
        return {k: r.get(k) for k in r.keys()}


def parse_lora_arg(text: str) -> tuple[str, float]:
    """'path[:strength]' -> (path, strength); a strength is a number after the last colon."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, 1.0


def _modules(table: dict) -> dict:
    """{(style, module): {role: key}} of a LoRA table."""
    out = {}
    for key in table:
        parts = core_lora.split_key(key)
        if parts is None:
            continue
        module, style, suffix = parts
        algo, role = core_lora._SUFFIXES[suffix]
        m = out.setdefault((style, module), {})
        m[role] = key
        if algo:
            m["algo"] = algo
    return out


def _target_index(names) -> dict:
    """{(place, flat module): (model key, which third of a fused q/k/v or None)} for a model's tensors."""
    names = list(names)
    _, prefix = find_denoiser({k: None for k in names})
    index = {}
    if prefix is not None:
        for k in names:
            if k.startswith(prefix) and k.endswith(".weight"):
                index[("unet", k[len(prefix):-len(".weight")].replace(".", "_"))] = (k, None)
    for te, places in _TE_PLACES.items():
        for pre, fmt in places:
            if fmt == "hf":
                for k in names:
                    if k.startswith(pre) and k.endswith(".weight"):
                        index[("te" + te, k[len(pre):-len(".weight")].replace(".", "_"))] = (k, None)
            else:
                for k in names:
                    m = _RESBLOCK.match(k[len(pre):]) if k.startswith(pre) else None
                    if not m:
                        continue
                    n, what = m.groups()
                    base = f"text_model_encoder_layers_{n}_"
                    if what == "attn.in_proj_weight":
                        for i, q in enumerate("qkv"):
                            index[("te" + te, base + f"self_attn_{q}_proj")] = (k, i)
                    else:
                        hf = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1",
                              "mlp.c_proj.weight": "mlp_fc2"}[what]
                        index[("te" + te, base + hf)] = (k, None)
    return index


def _place(style: str, module: str):
    if style == "kohya-te":
        m = _TE.match(module)
        return ("te" + m.group(1), m.group(2)) if m else None
    return "unet", module.replace(".", "_")


def _delta_shape(m: dict, shapes: dict):
    algo = m.get("algo", "lora")
    if algo == "lora":
        up, down = shapes[m["up"]], shapes[m["down"]]
        return up[0], _prod(down[1:])
    if algo == "loha":
        return shapes[m["up"]][0], _prod(shapes[m["down"]][1:])
    w1 = shapes[m["w1"]] if "w1" in m else (shapes[m["down1"]][0], shapes[m["w1b"]][1])
    w2 = shapes[m["w2"]] if "w2" in m else (shapes[m["down"]][0], _prod(shapes[m["w2b"]][1:]))
    return w1[0] * w2[0], w1[1] * w2[1]


def _prod(xs):
    p = 1
    for x in xs:
        p *= x
    return p


def delta(m: dict, t: dict, shape):
    """A module's weight change (float32) in the target's shape, at strength 1."""
    import torch
    algo = m.get("algo", "lora")
    f = {k: t[v].float() for k, v in m.items() if k not in ("algo",) and v in t}
    alpha = float(f["alpha"]) if "alpha" in f else None
    if algo == "lora":
        up, down = f["up"], f["down"]
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        return (torch.mm(up.flatten(1), down.flatten(1)) * scale).reshape(shape)
    if algo == "loha":
        scale = alpha / f["down"].shape[0] if alpha is not None else 1.0
        w1 = torch.mm(f["up"], f["down"])
        w2 = torch.mm(f["up2"], f["down2"])
        return (w1 * w2 * scale).reshape(shape)
    rank = None
    w1 = f["w1"] if "w1" in f else torch.mm(f["down1"], f["w1b"])
    if "w1" not in f:
        rank = f["w1b"].shape[0]
    if "w2" in f:
        w2 = f["w2"]
    else:
        w2 = torch.mm(f["down"], f["w2b"].flatten(1))
        rank = f["w2b"].shape[0]
    scale = alpha / rank if alpha is not None and rank else 1.0
    return (torch.kron(w1, w2) * scale).reshape(shape)


def plan(model_path: str, loras: list[tuple[str, float]]) -> tuple[dict, list[str], dict]:
    """({model key: [(third, lora index, module)]}, warnings, LoRA tables) after every check; raises
    one sentence when a LoRA does not fit."""
    from .inspect import inspect_file
    from .stream import Reader
    rep = inspect_file(model_path)
    if not rep["components"].get("denoiser"):
        raise ModelsmithError(f"{os.path.basename(model_path)}: no denoiser in this file to bake LoRAs into")
    with Reader(model_path) as r:
        shapes = {k: tuple(r.info(k)[1]) for k in r.keys()}
    index = _target_index(shapes)
    blocks = (rep.get("details") or {}).get("blocks")
    targets, warnings, tables = {}, [], []
    for i, (path, strength) in enumerate(loras):
        name = os.path.basename(path)
        lrep = inspect_file(path)
        info = lrep.get("lora")
        if not info:
            raise ModelsmithError(f"{name}: not a LoRA (no LoRA / LyCORIS tensors found)")
        refusals = [w for w in core_lora.fit(info, rep["family"], blocks) if "does not" in w or "exist here" in w
                    or "only partially" in w]
        if refusals:
            raise ModelsmithError(f"{name}: {refusals[0]} Nothing was written.")
        t = _read(path)
        tables.append(t)
        mods = _modules({k: None for k in t})
        lshapes = {k: tuple(v.shape) for k, v in t.items()}
        te_skipped = 0
        for (style, module), m in mods.items():
            bad = sorted(set(m) & set(UNSUPPORTED))
            if bad:
                raise ModelsmithError(f"{name}: its {module} uses {UNSUPPORTED[bad[0]]}, which merge-lora does not "
                                      f"bake; apply it with a LoRA loader instead. Nothing was written.")
            place = _place(style, module)
            hit = index.get(place) if place else None
            if hit is None:
                if place and place[0].startswith("te") and not any(p[0].startswith("te") for p in index):
                    te_skipped += 1
                    continue
                raise ModelsmithError(f"{name}: its layer {module} matches no layer of {os.path.basename(model_path)} "
                                      f"({rep['family']}); it was made for another model. Nothing was written.")
            key, third = hit
            want = shapes[key]
            if third is not None:
                want = (want[0] // 3,) + want[1:]
            got = _delta_shape(m, lshapes)
            if (got[0], got[1]) != (want[0], _prod(want[1:])):
                raise ModelsmithError(f"{name}: its {module} changes a {got[0]}x{got[1]} weight but the model's "
                                      f"{key} is {'x'.join(map(str, want))}; it was made for another model. "
                                      f"Nothing was written.")
            targets.setdefault(key, []).append((third, i, (style, module), m, strength))
        if te_skipped:
            warnings.append(f"{name}: {te_skipped} text-encoder layers not baked: this file holds no text encoder "
                            f"(apply them with a LoRA loader on the CLIP).")
    return targets, warnings, tables


def bake(model_path: str, loras: list[tuple[str, float]], output: str, *, overwrite=False, progress=None) -> dict:
    """Write `output`: the model with the LoRAs baked in. Returns {output, layers, warnings}."""
    import torch

    from .stream import AtomicWriter, Reader, check_output_path, prefetched
    if not loras:
        raise ModelsmithError("merge-lora needs at least one LoRA (LORA[:STRENGTH])")
    check_output_path(output, overwrite=overwrite)
    targets, warnings, tables = plan(model_path, loras)
    with Reader(model_path) as r:
        entries = {k: (r.info(k)[0], r.info(k)[1]) for k in r.keys()}
        meta = dict(r.metadata or {})
        meta["modelsmith.baked_loras"] = json.dumps([{"lora": os.path.basename(p), "strength": s} for p, s in loras])
        with AtomicWriter(output, entries, meta, overwrite=overwrite) as w:
            keys = list(entries)
            for n, (k, t) in enumerate(prefetched(keys, r.get)):
                if k in targets:
                    acc = t.float()
                    for third, i, _, m, strength in targets[k]:
                        if third is None:
                            acc += strength * delta(m, tables[i], acc.shape)
                        else:
                            rows = acc.shape[0] // 3
                            part = acc[third * rows:(third + 1) * rows]
                            part += strength * delta(m, tables[i], part.shape)
                    t = acc.to(t.dtype)
                w.add(k, t)
                del t
                if progress:
                    progress(n + 1, len(keys))
    return {"output": output, "layers": len(targets), "warnings": warnings}
