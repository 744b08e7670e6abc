"""Quantize a denoiser into ComfyUI's native quantized format, streaming tensor by tensor.

Per quantized layer: `<layer>.weight` (fp8 e4m3fn, or nvfp4 packed uint8), `<layer>.weight_scale`
(fp32 scalar for fp8; blocked E4M3 block scales for nvfp4), `<layer>.weight_scale_2` (nvfp4's fp32
per-tensor scale) and `<layer>.comfy_quant` (uint8 UTF-8 JSON {"format": ...}), as current ComfyUI
reads them; plus the `_quantization_metadata` header that ComfyUI 0.3.x reads, listing the fp8
layers (0.3.x knows only float8_e4m3fn, so nvfp4 files need a current ComfyUI).

Sensitive layers stay in high precision by preset: the family's registry record (core/registry.py)."""
from __future__ import annotations

import functools
import json
import re

from . import linear_re, registry
from .errors import ModelsmithError

# One preset per family: the layers its registry record keeps in high precision (core/registry.py)
PRESETS = {f.id: list(f.keep_high) for f in registry.FAMILIES}
# the pack's format names -> ComfyUI's `comfy_quant` format names (kernels/formats.QUANT_FORMATS)
FORMATS = {"fp8": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "int8": "int8_tensorwise", "mxfp8": "mxfp8",
           "nvfp4": "nvfp4"}
# block formats: the multiple each weight dimension (rows, columns) must be; other layers stay in high precision
BLOCKS = {"nvfp4": 16, "mxfp8": 32}


def fits(fmt: str, shape) -> bool:
    """Whether a 2-D weight of `shape` can be stored in ComfyUI format `fmt` without padding."""
    b = BLOCKS.get(fmt, 1)
    return len(shape) == 2 and shape[0] % b == 0 and shape[1] % b == 0


def file_entries(fmt: str, shape) -> dict:
    """The tensors (suffix -> (safetensors dtype, shape)) a `shape` weight takes in ComfyUI format `fmt`."""
    from ..kernels.formats import QUANT_FORMATS
    rows, cols = shape
    if fmt == "nvfp4":
        return {".weight": ("U8", (rows, cols // 2)),
                ".weight_scale": ("F8_E4M3", (-(-rows // 128) * 128, -(-(cols // 16) // 4) * 4)),
                ".weight_scale_2": ("F32", ())}
    if fmt == "mxfp8":  # E8M0 exponents as uint8, in the block-scaling layout
        return {".weight": ("F8_E4M3", (rows, cols)),
                ".weight_scale": ("U8", (-(-rows // 128) * 128, -(-(cols // 32) // 4) * 4))}
    return {".weight": (QUANT_FORMATS[fmt].storage, (rows, cols)), ".weight_scale": ("F32", ())}


# 2-D weights that are lookup tables, not linear layers (ComfyUI quantizes only linear layers)
NOT_LINEAR = re.compile(r"(^|\.)(embed|embedding|embeddings|embed_tokens|token_embedding|wte|pos_embed|"
                        r"position_embedding|shared)\.weight$")


def preset_for(family: str | None) -> str | None:
    """The preset `auto` picks for a model family: its own record (None: unknown family, every
    eligible layer quantized)."""
    return family if registry.get(family) else None


def preset_patterns(preset: str | None) -> list[str]:
    """The keep-in-high-precision patterns of a preset (a family id; none or None: no layer)."""
    rec = registry.get(preset) if preset not in (None, "none") else None
    return list(rec.keep_high) if rec else []


MAX_PATTERN_CHARS = 200


def parse_exclude(text: str) -> list[str]:
    """Comma-separated regular expressions, each checked (a bad one is named, not raised later).

    Patterns are matched by core/linear_re.py (a Thompson NFA: time linear in the layer name, never
    backtracking), so no pattern can freeze a request; backreferences and lookarounds, which need
    backtracking, are refused with a sentence, as are patterns over 200 characters."""
    patterns = [p.strip() for p in (text or "").split(",") if p.strip()]
    for p in patterns:
        if len(p) > MAX_PATTERN_CHARS:
            raise ModelsmithError(f"exclude: a pattern of {len(p)} characters is too long (at most {MAX_PATTERN_CHARS})")
        try:
            _compiled(p)
        except linear_re.PatternError as e:
            raise ModelsmithError(f"exclude: {p!r}: {e}") from None
    return patterns


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str):
    return linear_re.compile(pattern)


def excluded(layer: str, patterns) -> bool:
    return any(_compiled(p).search(layer) for p in patterns)


def plan(table: dict, fmt: str, patterns, prefix: str = "") -> dict:
    """layer -> format for every 2-D `.weight` of the denoiser that is quantized."""
    layers = {}
    for name, (dtype, shape) in table.items():
        if not name.startswith(prefix) or not name.endswith(".weight") or len(shape) != 2:
            continue
        if dtype not in ("F32", "F16", "BF16") or NOT_LINEAR.search(name):
            continue
        layer = name[: -len(".weight")]
        if excluded(layer[len(prefix):], patterns):
            continue
        if not fits(FORMATS[fmt], shape):
            continue  # a block format needs whole blocks; such layers stay in high precision
        layers[layer] = FORMATS[fmt]
    return layers


def quantize_layer(w, fmt: str, precise: bool = True) -> dict:
    """One linear weight in ComfyUI's file format: {"weight", "weight_scale"[, "weight_scale_2"]};
    `fmt` is a format name of the files (float8_e4m3fn, float8_e5m2, int8_tensorwise, mxfp8, nvfp4).
    `precise`: fp8 values from a float32 product (one rounding); False: comfy-kitchen's eager bits."""
    import torch

    from ..kernels import fp8 as k_fp8
    if fmt == "nvfp4":
        from ..kernels import nvfp4 as k_nvfp4
        q, blocked, s2 = k_nvfp4.quantize(w)
        return {"weight": q, "weight_scale": blocked, "weight_scale_2": s2.reshape(())}
    if fmt == "mxfp8":
        from ..kernels import mxfp8 as k_mxfp8
        q, blocked = k_mxfp8.quantize(w)
        return {"weight": q, "weight_scale": blocked}
    if fmt == "int8_tensorwise":
        from ..kernels import int8 as k_int8
        q, scale = k_int8.quantize(w)
        return {"weight": q, "weight_scale": scale.reshape(())}
    q, scale = k_fp8.quantize(w, dtype=getattr(torch, fmt), precise=precise)
    return {"weight": q, "weight_scale": scale.reshape(())}


def dequantize_layer(parts: dict, fmt: str, dtype):
    """The weight back from quantize_layer's tensors (the pack's kernels; what core computes with)."""
    if fmt == "nvfp4":
        from ..kernels import nvfp4 as k
        return k.dequantize(parts["weight"], parts["weight_scale"], parts["weight_scale_2"], dtype)
    if fmt == "mxfp8":
        from ..kernels import mxfp8 as k
        return k.dequantize(parts["weight"], parts["weight_scale"], dtype)
    if fmt == "int8_tensorwise":
        from ..kernels import int8 as k
        return k.dequantize(parts["weight"], parts["weight_scale"], dtype)
    from ..kernels import fp8 as k
    return k.dequantize(parts["weight"], parts["weight_scale"], dtype)


def dequantized_rows(parts: dict, fmt: str):
    """A function (r0, r1) -> float32 rows r0:r1 of the dequantized weight: memory for a slice of the
    layer, not a second copy of it."""
    import torch
    q = parts["weight"]
    if fmt in ("nvfp4", "mxfp8"):
        from ..kernels import mxfp8 as k_mx
        from ..kernels import nvfp4 as k_nv
        block = k_nv.BLOCK if fmt == "nvfp4" else k_mx.BLOCK
        cols = q.shape[1] * (2 if fmt == "nvfp4" else 1)
        rows = k_nv.from_blocked(parts["weight_scale"].view(torch.uint8) if fmt == "mxfp8" else parts["weight_scale"],
                                 q.shape[0], cols // block)
        if fmt == "nvfp4":
            return lambda r0, r1: k_nv.dequantize_rows(q[r0:r1], rows[r0:r1], parts["weight_scale_2"], torch.float32)
        return lambda r0, r1: (q[r0:r1].float().reshape(r1 - r0, -1, block) * k_mx._exp_to_f32(rows[r0:r1]).unsqueeze(-1)
                               ).reshape(r1 - r0, cols)
    return lambda r0, r1: dequantize_layer({"weight": q[r0:r1], "weight_scale": parts["weight_scale"]}, fmt, torch.float32)


def comfy_quant_tensor(fmt: str):
    """The per-layer `comfy_quant` tensor: uint8 UTF-8 JSON {"format": fmt}."""
    import torch
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


def verify(path: str, layers: dict, table: dict) -> list[str]:
    """What a written quantized file gets wrong against its plan (`layers`: layer -> format, `table`: the
    source's {name: (dtype, shape)}): each planned layer's tensors, dtypes and shapes, its comfy_quant
    format, finite positive scalar scales, and no quantized layer the plan does not have. Empty: it
    holds exactly what was planned."""
    import torch

    from .stream import Reader
    bad = []
    with Reader(path) as r:
        for layer, fmt in layers.items():
            for suffix, (dt, shape) in file_entries(fmt, table[layer + ".weight"][1]).items():
                info = r.info(layer + suffix) if layer + suffix in r else None
                if info is None or info.dtype != dt or tuple(info.shape) != tuple(shape):
                    got = f"{info.dtype} {list(info.shape)}" if info else "missing"
                    bad.append(f"{layer}{suffix} is {got}, planned {dt} {list(shape)}")
                elif dt == "F32" and not shape:
                    v = float(r.get(layer + suffix))
                    if not (v > 0 and v < float("inf")):
                        bad.append(f"{layer}{suffix} is {v}, not a finite positive scale")
            conf = r.get(layer + ".comfy_quant") if layer + ".comfy_quant" in r else None
            try:
                got = json.loads(bytes(conf.to(torch.uint8).tolist()).decode()).get("format") if conf is not None else None
            except (ValueError, AttributeError):
                got = "unreadable"
            if got != fmt:
                bad.append(f"{layer}.comfy_quant says {got}, planned {fmt}")
        extra = [k for k in r.keys() if k.endswith(".comfy_quant") and k[: -len(".comfy_quant")] not in layers]
        bad += [f"{k[: -len('.comfy_quant')]} is quantized, planned in high precision" for k in extra]
    return bad


def run_quantize(src, output, fmt="fp8", preset="auto", exclude="", overwrite=False, progress=None,
                 max_error=None, max_bytes=None, candidates=("nvfp4", "fp8"), activations=None) -> dict:
    """Quantize `src` into `output` in one format (`fmt`), or with `max_error` / `max_bytes` one format
    per layer among `candidates` chosen by measured error (core/qplan.py). Every quantized layer's
    output error is measured and reported (returned, and in the file's `modelsmith.quantization`
    metadata); the written file is re-read and checked against the plan. `activations`: {layer name
    without the file's prefix: input rows} captured while sampling (qplan.capture_inputs), used in
    place of random activations for the layers they cover."""
    import os

    import torch

    from . import qplan
    from .inspect import inspect_file
    from .stream import AtomicWriter, Reader, prefetched, release_freed

    mixed = max_error is not None or max_bytes is not None
    wanted = list(candidates) if mixed else [fmt]
    bad = [f for f in wanted if f not in FORMATS]
    if bad:
        raise ModelsmithError(f"format must be one of {', '.join(FORMATS)} (not {', '.join(bad)})")
    if max_error is not None and max_bytes is not None:
        raise ModelsmithError("give an error budget or a size budget, not both")
    report = inspect_file(src)
    if not report["components"].get("denoiser"):
        raise ModelsmithError(f"{src}: no denoiser to quantize")
    if report.get("quantization") or report["precision"] in ("fp8-scaled", "nvfp4"):
        raise ModelsmithError(f"{src} is already quantized ({report['precision']})")
    family = report["family"]
    if preset == "auto":
        preset = preset_for(family)
    elif preset not in (None, "none") and not registry.get(preset):
        raise ModelsmithError(f"unknown preset {preset!r}; choose auto, none or a family: {', '.join(registry.IDS)}")
    patterns = preset_patterns(preset) + parse_exclude(exclude)
    rec = registry.get(family)
    from .families import find_denoiser
    with Reader(src) as r:
        table = {k: (t.dtype, t.shape) for k, t in r.header.tensors.items()}
        _, prefix = find_denoiser(table)
        options = {}  # layer -> the formats it may take
        for f in wanted:
            extra = list(rec.keep_high_nvfp4_file) if f == "nvfp4" and rec else []  # what core's detection reads
            for layer, name in plan(table, f, patterns + extra, prefix or "").items():
                options.setdefault(layer, []).append(name)
        errors = {}
        cache = {}

        def weight_and_inputs(layer, t):  # the weight as quantized (fp32 sources via bf16), its captured inputs
            return (t.to(torch.bfloat16) if t.dtype == torch.float32 else t,
                    (activations or {}).get(layer[len(prefix or ""):]))
        if mixed:  # pass 1: every candidate of every layer measured, one tensor in memory at a time
            names = [l + ".weight" for l in options]
            for i, (k, t) in enumerate(prefetched(names, r.get)):
                x, acts = weight_and_inputs(k[:-7], t)
                errors[k[:-7]] = {f: qplan.output_error(x, f, cache, acts) for f in options[k[:-7]]}
                del x, t
                release_freed()
                if progress:
                    progress(i + 1, 2 * len(names) + len(table))
            sizes = {l: {**{f: qplan.layer_bytes(f, table[l + ".weight"][1], "U8") for f in options[l]},
                         None: qplan.layer_bytes(None, table[l + ".weight"][1], table[l + ".weight"][0])}
                     for l in options}
            if max_error is not None:
                chosen = qplan.choose_by_error(errors, max_error, sizes)
            else:
                fixed = sum(qplan.layer_bytes(None, shape, dt) for k, (dt, shape) in table.items()
                            if not (k.endswith(".weight") and k[:-7] in options))
                chosen = qplan.choose_by_size(errors, sizes, int(max_bytes), fixed)
                if chosen is None:
                    least = fixed + sum(min(v for f, v in sizes[l].items() if f) for l in options)
                    raise ModelsmithError(f"even with every layer in its smallest format the file holds "
                                          f"{least / 1e9:.3g} GB, over the {max_bytes / 1e9:.3g} GB asked")
            layers = {l: f for l, f in chosen.items() if f is not None}
        else:
            layers = {l: f[0] for l, f in options.items()}
        entries = {}
        for k, (dt, shape) in table.items():
            layer = k[: -len(".weight")] if k.endswith(".weight") else None
            if layer in layers:
                conf = json.dumps({"format": layers[layer]}).encode()
                for suffix, spec in file_entries(layers[layer], shape).items():
                    entries[layer + suffix] = spec
                entries[layer + ".comfy_quant"] = ("U8", (len(conf),))
            else:
                entries[k] = (dt, shape)
        meta = dict(r.metadata)
        fp8_layers = {l[len(prefix or ""):]: {"format": f} for l, f in layers.items() if f == "float8_e4m3fn"}
        if fp8_layers:
            meta["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": fp8_layers})
        stats = {"quantized_layers": len(layers), "quantized_params": 0, "quantized_bytes": 0}
        offset = 2 * len(options) if mixed else 0
        late = {"modelsmith.quantization": qplan.reserve(layers)}
        with AtomicWriter(output, entries, meta, overwrite=overwrite, late=late) as w:
            for i, (k, t) in enumerate(prefetched(list(table), r.get)):
                layer = k[: -len(".weight")] if k.endswith(".weight") else None
                if layer in layers:
                    x, acts = weight_and_inputs(layer, t)
                    parts = [(layer + "." + n, v) for n, v in quantize_layer(x, layers[layer]).items()]
                    parts.append((layer + ".comfy_quant", comfy_quant_tensor(layers[layer])))
                    if layer not in errors or layers[layer] not in errors[layer]:
                        errors.setdefault(layer, {})[layers[layer]] = qplan.output_error(x, layers[layer], cache, acts)
                    stats["quantized_params"] += t.numel()
                    stats["quantized_bytes"] += sum(p.numel() * p.element_size() for n, p in parts[:-1])
                    for n, p in parts:
                        w.add(n, p)
                    del x, parts
                else:
                    w.add(k, t)
                del t
                if i % 8 == 0 or layer in layers:
                    release_freed()
                if progress:
                    progress(offset + i + 1, offset + len(table))
            covered = sum(1 for l in layers if l[len(prefix or ""):] in (activations or {}))
            measure = (f"relative output error on the inputs {covered} of {len(layers)} layers saw while sampling a "
                       f"calibration prompt (random N(0,1) rows for the others)") if covered else None
            quality = qplan.report(layers, {l: errors[l][f] for l, f in layers.items()},
                                   os.path.getsize(src), len(w.prefix) + w.data_size, measure)
            w.set_late("modelsmith.quantization", json.dumps(quality, separators=(",", ":")))
    problems = verify(output, layers, table)  # the proof: nothing silently fell back
    if problems:
        os.unlink(output)
        raise ModelsmithError(f"{output}: the written file does not hold what was planned ({len(problems)} "
                              f"problem{'s' if len(problems) > 1 else ''}, first: {problems[0]}); it was removed")
    stats["verified_layers"] = len(layers)
    stats["quality"] = quality
    stats["bytes_per_param"] = stats["quantized_bytes"] / max(1, stats["quantized_params"])
    stats["output"] = output
    stats["preset"] = preset
    return stats
