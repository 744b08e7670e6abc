"""What the running ComfyUI would do with a file, asked of core itself (never a table of versions).

Core's own model detection runs on the file's header turned into meta tensors (shapes and dtypes,
no weight read, no memory), and core's own model class for what it detected is built on the meta
device. Comparing that model's parameters with the file's tensors says what core's stock loaders
would build, drop or fail on: the blocks of an Anima tune core builds, whether core's fixed LLM
adapter holds the file's adapter, and the text-encoder width that adapter reads.
"""
from __future__ import annotations

import logging
import os

import torch

from ..core.families import count_indexed, find_denoiser

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def meta_state_dict(table: dict) -> dict:
    """{name: (safetensors dtype, shape)} -> {name: meta tensor}: what core's detection reads, no data."""
    return {k: torch.empty(tuple(shape), dtype=_DTYPES.get(dtype, torch.uint8), device="meta")
            for k, (dtype, shape) in table.items()}


class _Quiet:
    """Core's detection logs 'no match' at error level; a probe is not an error. Only records from
    core's model_detection module are held back, and only while the probe runs (other threads'
    messages pass as usual)."""

    @staticmethod
    def filter(record):
        return record.module != "model_detection"

    def __enter__(self):
        logging.root.addFilter(self.filter)

    def __exit__(self, *exc):
        logging.root.removeFilter(self.filter)


def core_build(table: dict, metadata: dict | None = None) -> dict:
    """What core's stock diffusion-model loader makes of a file's tensors.

    Returns {"detected": core's config class name or None, "unet_config": what its detection read,
    "model_keys": {name: shape} of the model core builds (absent when it could not be built),
    "file_keys": {name: shape} of the file's denoiser (prefix removed), "error": why not built}."""
    import comfy.model_detection
    sd = meta_state_dict(table)
    out = {"detected": None, "unet_config": None, "file_keys": None, "model_keys": None, "error": None}
    with _Quiet():
        try:
            prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
            config = comfy.model_detection.model_config_from_unet(sd, prefix, metadata=metadata)
        except Exception as e:  # core's detection on an odd header: it would fail the same way
            out["error"] = f"core's detection failed ({type(e).__name__}: {e})"
            return out
        out["file_keys"] = {k[len(prefix):]: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}
        if config is None:
            return out
        out["detected"] = type(config).__name__
        out["unet_config"] = {k: v for k, v in config.unet_config.items() if isinstance(v, (int, float, str, bool))}
        try:
            config.set_inference_dtype(torch.float32, None)
            model = config.get_model({}, "", device="meta")
            out["model_keys"] = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
        except Exception as e:
            out["error"] = f"core could not build it ({type(e).__name__}: {e})"
    return out


def anima_verdict(table: dict, metadata: dict | None = None) -> dict:
    """What the running ComfyUI's stock loaders do with an Anima file, from core's own detection and
    model class: {"native": bool, "file_blocks", "core_blocks", "adapter_fits", "adapter_reads",
    "dropped", "mismatched", "loads_whole", "sentence"}."""
    from .anima import native_anima_available
    _, prefix = find_denoiser(table)
    file_blocks = count_indexed([k[len(prefix or ""):] for k in table if k.startswith(prefix or "")], "blocks")
    verdict = {"native": native_anima_available(), "file_blocks": file_blocks, "core_blocks": None, "adapter_fits": None,
               "adapter_reads": None, "dropped": [], "mismatched": [], "loads_whole": False}
    if not verdict["native"]:
        verdict["sentence"] = "The running ComfyUI has no native Anima: only Modelsmith's Anima loader loads this file."
        return verdict
    built = core_build(table, metadata)
    fk, mk = built["file_keys"] or {}, built["model_keys"]
    verdict["file_blocks"] = count_indexed(fk, "blocks") or file_blocks
    if built["detected"] != "Anima" or mk is None:
        verdict["sentence"] = ("The running ComfyUI does not take this file as Anima"
                               + (f": {built['error']}." if built["error"] else "."))
        return verdict
    verdict["core_blocks"] = count_indexed(mk, "blocks")
    verdict["dropped"] = sorted(k for k in fk if k not in mk)
    verdict["mismatched"] = sorted(k for k in fk if k in mk and mk[k] != fk[k])
    adapter = {k: v for k, v in mk.items() if k.startswith("llm_adapter.")}
    verdict["adapter_fits"] = not any(k.startswith("llm_adapter.") for k in verdict["dropped"] + verdict["mismatched"])
    k_proj = adapter.get("llm_adapter.blocks.0.cross_attn.k_proj.weight")
    verdict["adapter_reads"] = k_proj[1] if k_proj and len(k_proj) == 2 else None
    verdict["loads_whole"] = not verdict["dropped"] and not verdict["mismatched"] and verdict["adapter_fits"]
    n, c = verdict["file_blocks"], verdict["core_blocks"]
    if verdict["loads_whole"]:
        verdict["sentence"] = (f"The running ComfyUI has native Anima and its stock loaders build all {n} blocks of "
                               f"this file.")
    elif c < n:
        verdict["sentence"] = (f"The running ComfyUI has native Anima: its stock loaders would build {c} of the {n} "
                               f"blocks (broken images); Modelsmith's Anima loader builds all {n}.")
    elif not verdict["adapter_fits"]:
        verdict["sentence"] = (f"The running ComfyUI's native Anima has a fixed LLM adapter (reading "
                               f"{verdict['adapter_reads']}-wide text-encoder states) that does not hold this file's; "
                               f"Modelsmith's Anima loader builds the file's own.")
    else:
        what = verdict["dropped"][:3] or verdict["mismatched"][:3]
        verdict["sentence"] = ("The running ComfyUI's native Anima would not load this file whole (" + ", ".join(what)
                               + (" ..." if len(verdict["dropped"]) + len(verdict["mismatched"]) > 3 else "")
                               + "); Modelsmith's Anima loader builds it.")
    return verdict


def anima_verdict_for_file(path: str) -> dict | None:
    """anima_verdict of a safetensors file from its header alone; None for a pickle (a scan never
    unpickles; its report carries the header-only facts instead)."""
    from ..core.safetensors_io import file_format, read_header
    if file_format(os.fspath(path)) != "safetensors":
        return None
    header = read_header(path)
    table = {k: (t.dtype, t.shape) for k, t in header.tensors.items()}
    return anima_verdict(table, header.metadata)


def core_anima_adapter() -> dict | None:
    """The LLM adapter the running core's native Anima builds, read from core's own class built on
    the meta device: {dim, source_dim, layers, heads, vocab}; None without native Anima."""
    try:
        from comfy.ldm.anima.model import LLMAdapter
    except ImportError:
        return None
    import comfy.ops
    a = LLMAdapter(device="meta", operations=comfy.ops.disable_weight_init)
    cross = a.blocks[0].cross_attn
    return {"dim": a.embed.weight.shape[1], "source_dim": cross.k_proj.weight.shape[1], "layers": len(a.blocks),
            "heads": cross.n_heads, "vocab": a.embed.weight.shape[0]}
