"""Runtime quantization of a loaded ComfyUI model (MODEL = ModelPatcher) to scaled fp8 or NVFP4.

The loader's model is left untouched (ComfyUI caches it; a later run may ask for another dtype):
the model object is copied with every parameter and buffer *sharing* storage with the original
(fresh Parameter objects, so moving the copy between devices does not move the original), then the
eligible linear layers of the copy's denoiser are replaced by `kernels.qlinear.QuantLinear`. Only
the quantized layers take new memory; they are what a GPU load moves.

Layers kept in high precision: the family's registry record (the same layers as a quantized file) plus the user's
`exclude` patterns, layers whose in_features do not divide into 16-blocks (nvfp4), and anything
that is not a 2-D linear weight (convolutions, norms, embeddings).

If the source model currently holds patched weights (a LoRA applied by an earlier load), the copy
takes the originals from the patcher's backup, and attributes from its object-patch backup, so
patches are not applied twice.
"""
from __future__ import annotations

import copy
import inspect

import comfy.utils
import torch

from ..core.errors import ModelsmithError
from .family import family_of
from ..core.quantize import BLOCKS, excluded, parse_exclude, preset_for, preset_patterns
from ..kernels.formats import SCALE_SUFFIXES, logical_columns
from ..kernels.qlinear import FORMATS, QuantLinear, compute_path


def _calculate_weight(patches, weight, key):
    import comfy.lora
    return comfy.lora.calculate_weight(patches, weight, key, intermediate_dtype=torch.float32)


QuantLinear.calculate_weight = staticmethod(_calculate_weight)  # LoRA patches on the pack's layers

# what ModelPatcher keeps on the model about its loading: a fresh copy starts unloaded
_MODEL_STATE = {"model_loaded_weight_memory": 0, "lowvram_patch_counter": 0, "model_lowvram": False,
                "current_weight_patches_uuid": None, "model_offload_buffer_memory": 0}
_MODULE_STATE = ("comfy_patched_weights", "prev_comfy_cast_weights")


def core_quant_ops(fmt: str, device):
    """Whether the running ComfyUI has its own quantized layers for `fmt` (current ComfyUI: comfy-kitchen
    QuantizedTensor weights in `comfy.ops.mixed_precision_ops` layers, what core builds for quantized
    files): None where it lacks them (0.3.x) or cannot carry the format, else the set of formats
    `device` computes emulated (dequantize, then matmul), decided as core decides it."""
    try:
        import comfy.model_management as mm
        import comfy.ops
        import comfy.quant_ops as qo
    except ImportError:
        return None
    if not getattr(qo, "_CK_AVAILABLE", False) or fmt not in getattr(qo, "QUANT_ALGOS", {}) \
            or not hasattr(comfy.ops, "mixed_precision_ops"):
        return None
    disabled = set()
    for fn, names in (("supports_nvfp4_compute", ("nvfp4",)), ("supports_mxfp8_compute", ("mxfp8",)),
                      ("supports_fp8_compute", ("float8_e4m3fn", "float8_e5m2"))):
        check = getattr(mm, fn, None)
        if check is None or not check(device):
            disabled.update(names)
    return disabled


def _core_linear(linear: torch.nn.Linear, fmt: str, compute_dtype, disabled):
    """`linear` as the runtime's own quantized layer, loaded from the pack's quantizer output in
    ComfyUI's file format (weight, weight_scale[, weight_scale_2], comfy_quant) -> (layer, bytes)."""
    import comfy.ops

    from ..core.quantize import comfy_quant_tensor, quantize_layer
    w = linear.weight.detach()
    sd = quantize_layer(w, fmt)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    sd["comfy_quant"] = comfy_quant_tensor(fmt)
    if linear.bias is not None:
        sd["bias"] = linear.bias.detach()
    ops = comfy.ops.mixed_precision_ops({}, compute_dtype, disabled=disabled)
    layer = ops.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device)
    missing, unexpected = layer.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelsmithError(f"ComfyUI's quantized layer did not take the {fmt} weights ({missing or unexpected})")
    return layer, nbytes


def _copy_sharing_storage(patcher):
    """A copy of the patcher's model object whose parameters share storage with the original.

    The model config is shared, not copied: current ComfyUI's configs answer None for any missing
    attribute (`__getattr__`), which deepcopy takes for a `__deepcopy__` method and calls."""
    model = patcher.model
    originals = {k: b.weight for k, b in getattr(patcher, "backup", {}).items()}
    memo = {}
    for shared in (getattr(model, "model_config", None),):
        if shared is not None:
            memo[id(shared)] = shared
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in memo:
            src = originals.get(name, p.data)
            memo[id(p)] = torch.nn.Parameter(src, requires_grad=p.requires_grad)
    for _, b in model.named_buffers(remove_duplicate=False):
        memo[id(b)] = b
    try:
        new = copy.deepcopy(model, memo)
    except Exception as e:  # an object in this model that cannot be copied: say which, change nothing
        raise ModelsmithError(f"could not copy {type(model).__name__} to quantize it: {type(e).__name__}: {e}") from e
    for attr, value in getattr(patcher, "object_patches_backup", {}).items():
        try:
            comfy.utils.set_attr(new, attr, value)
        except AttributeError:
            pass
    for attr, value in _MODEL_STATE.items():
        setattr(new, attr, value)
    for m in new.modules():
        for attr in _MODULE_STATE:
            if attr in m.__dict__:
                delattr(m, attr)
        if hasattr(m, "weight_function"):
            m.weight_function = []
        if hasattr(m, "bias_function"):
            m.bias_function = []
    return new


def quantize_denoiser(dit: torch.nn.Module, fmt: str, patterns, core=None) -> dict:
    """Replace eligible linear layers of `dit` in place; returns counts and bytes.

    `core`: (compute dtype, disabled formats) to build the runtime's own quantized layers
    (core_quant_ops); None: the pack's QuantLinear."""
    stats = {"quantized_layers": 0, "kept_layers": 0, "quantized_params": 0, "quantized_bytes": 0,
             "source_bytes": 0, "kept": []}
    targets = []
    for name, m in dit.named_modules():
        if isinstance(m, torch.nn.Linear) and not isinstance(m, QuantLinear):
            w = m.weight
            if w is None or w.ndim != 2 or not w.is_floating_point() or w.dtype.itemsize < 2:
                continue
            if excluded(name, patterns) or w.shape[1] % BLOCKS.get(fmt, 1):  # block formats: whole blocks
                stats["kept_layers"] += 1
                stats["kept"].append(name)
                continue
            targets.append((name, m))
    for name, m in targets:
        if core is not None:
            q, nbytes = _core_linear(m, fmt, *core)
        else:
            q = QuantLinear.from_linear(m, fmt)
            nbytes = q.quantized_bytes()
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name) if parent_name else dit
        setattr(parent, child, q)
        stats["quantized_layers"] += 1
        stats["quantized_params"] += m.weight.numel()
        stats["source_bytes"] += m.weight.numel() * m.weight.element_size()
        stats["quantized_bytes"] += nbytes
    stats["bytes_per_param"] = stats["quantized_bytes"] / max(1, stats["quantized_params"])
    return stats


def _clone_onto(patcher, new_model):
    """A clone of `patcher` (patches, options, wrappers, hooks) over `new_model`, with empty backups.

    Newer ComfyUI clones onto another model through `clone(model_override=...)` (and can make the
    clone a classic, non-dynamic patcher, which is what custom modules need); 0.3.x has neither,
    so there the clone's model and backup containers are replaced after cloning."""
    params = inspect.signature(patcher.clone).parameters
    if "model_override" in params and hasattr(patcher, "get_clone_model_override"):
        _, state = patcher.get_clone_model_override()
        empty = tuple(type(x)() for x in state)
        kwargs = {"model_override": (new_model, empty)}
        if "disable_dynamic" in params:
            kwargs["disable_dynamic"] = True
        n = patcher.clone(**kwargs)
    else:
        n = patcher.clone()
        n.model = new_model
        n.backup = {}
        n.object_patches_backup = {}
        n.pinned = set()
        if hasattr(n, "backup_buffers"):
            n.backup_buffers = {}
    n.size = 0  # recomputed from the quantized model
    n.parent = None
    return n


def _is_quantized(m) -> bool:
    """A layer quantized by the pack (QuantLinear) or by ComfyUI (a QuantizedTensor weight)."""
    w = getattr(m, "weight", None)
    return isinstance(m, QuantLinear) or type(getattr(w, "data", w)).__name__ == "QuantizedTensor"


def quantized_patcher(patcher, fmt: str, preset: str = "auto", exclude: str = "", backend: str = "auto"):
    """A clone of `patcher` over a copy of its model whose denoiser linears are quantized.

    backend: `comfyui` builds the runtime's own quantized layers (current ComfyUI),
    `modelsmith` the pack's QuantLinear (any ComfyUI), `auto` the runtime's where it has them."""
    from ..core.quantize import FORMATS as FILE_NAMES
    if fmt not in FILE_NAMES.values():
        raise ValueError(f"format must be one of {', '.join(FILE_NAMES.values())}")
    dit = getattr(patcher.model, "diffusion_model", None)
    if dit is None:
        raise ValueError("this MODEL has no diffusion_model to quantize")
    if any(_is_quantized(m) for m in dit.modules()):
        raise ValueError("this MODEL is already quantized; connect the loader's full-precision MODEL instead")
    family = family_of(patcher)[0]
    if preset == "auto":
        preset = preset_for(family)
    patterns = preset_patterns(preset)
    patterns += parse_exclude(exclude)
    new_model = _copy_sharing_storage(patcher)
    disabled = core_quant_ops(fmt, patcher.load_device) if backend in ("auto", "comfyui") else None
    if backend == "comfyui" and disabled is None:
        raise ValueError("this ComfyUI has no quantized-tensor layers (comfy.quant_ops) for " + fmt)
    if disabled is None and fmt not in FORMATS:  # the pack's own layers run fp8 and nvfp4 only
        raise ValueError(f"{fmt} runs on ComfyUI's own quantized layers (ComfyUI >= 0.29 with comfy-kitchen), which "
                         f"{'were not chosen (backend modelsmith)' if backend == 'modelsmith' else 'this ComfyUI lacks'}")
    core = None
    if disabled is not None:
        compute = getattr(new_model, "manual_cast_dtype", None) or new_model.get_dtype()
        if compute not in (torch.float32, torch.float16, torch.bfloat16):
            compute = torch.bfloat16
        core = (compute, disabled)
    stats = quantize_denoiser(new_model.diffusion_model, fmt, patterns, core=core)
    if getattr(new_model.diffusion_model, "modelsmith_fp32_residual", False):
        from .fp16_residual import enable_fp32_residual
        enable_fp32_residual(new_model.diffusion_model, reinstall=True)
    n = _clone_onto(patcher, new_model)
    if getattr(new_model, "device", None) is None:
        new_model.device = patcher.offload_device
    if core is not None:
        native = fmt not in core[1]
        stats.update(backend="comfyui", compute=("ComfyUI quantized layers, native " if native else
                                              "ComfyUI quantized layers, emulated (dequantize then matmul) ") + "on "
                     + str(patcher.load_device))
    else:
        stats.update(backend="modelsmith", compute=compute_path(fmt, patcher.load_device))
    stats.update(family=family, preset=preset or "none", format=fmt)
    return n, stats


# ----------------------------------------------------------------------------------------------
# Quantized files (ComfyUI's native format) loaded into QuantLinear layers

FILE_FORMATS = {"float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "nvfp4": "nvfp4"}
_AUX = SCALE_SUFFIXES


def core_reads(fmt: str) -> bool:
    """Whether the running ComfyUI reads quantized layers in `fmt` from a file (its QUANT_ALGOS,
    with comfy-kitchen present): asked of core, never decided from a version table."""
    try:
        import comfy.quant_ops as qo
    except ImportError:
        return False
    return fmt in getattr(qo, "QUANT_ALGOS", {}) and getattr(qo, "_CK_AVAILABLE", True)


def check_core_reads(formats, name: str) -> None:
    """One sentence, before any work, when a file holds a quantized format that neither the running
    ComfyUI nor the pack's own layers (FILE_FORMATS) can read."""
    missing = sorted({f for f in formats if not core_reads(f) and f not in FILE_FORMATS})
    if missing:
        from ..kernels.formats import needs_newer_comfyui
        raise ModelsmithError(f"{name}: " + needs_newer_comfyui(missing[0]))


def quantized_layers(sd: dict, metadata: dict | None = None, prefix: str = "") -> dict:
    """{layer key (with the file's prefix): format} of a file's quantized layers, found by their
    `comfy_quant` tensor or the `_quantization_metadata` header, whatever the format (who can compute
    it is decided where it is computed)."""
    from ..core.safetensors_io import quant_format_of, small_json_object
    layers = {}
    if metadata and metadata.get("_quantization_metadata"):
        entries = small_json_object(metadata["_quantization_metadata"], "_quantization_metadata").get("layers", {})
        if not isinstance(entries, dict):
            raise ModelsmithError("_quantization_metadata: 'layers' is not an object")
        for layer, conf in entries.items():
            layers[layer] = quant_format_of(conf) or repr(conf)[:60]
    for k in sd:
        if k.endswith(".comfy_quant"):
            conf = small_json_object(bytes(sd[k].to(torch.uint8).flatten().tolist()), k, max_bytes=1 << 16)
            layers[k[: -len(".comfy_quant")]] = quant_format_of(conf) or repr(conf.get("format"))[:60]
    resolved = {}
    for layer, fmt in layers.items():
        full = next((f for f in (layer, prefix + layer) if f + ".weight" in sd), None)
        if full is not None:
            resolved[full] = fmt
    return resolved


def split_quantized(sd: dict, metadata: dict | None = None, prefix: str = "") -> tuple[dict, dict]:
    """(state dict in QuantLinear's form, {layer: format}) of a file's tensors.

    Layers are found by their `comfy_quant` tensor or, for files that only carry it, the
    `_quantization_metadata` header (which names layers without the file's key `prefix`). In the returned dict a quantized layer has `weight` (stored
    form), `weight_scale` (fp32 scalar, or row-major E4M3 block scales for nvfp4) and
    `weight_scale_2`; `comfy_quant` and `input_scale` are gone. Unknown formats are refused."""
    from ..kernels import nvfp4 as k_nvfp4
    resolved = quantized_layers(sd, metadata, prefix)
    other = sorted({f for f in resolved.values() if f not in FILE_FORMATS})
    if other:
        from ..kernels.formats import needs_newer_comfyui
        raise ModelsmithError(
            (f"Modelsmith's own quantized layers compute {', '.join(FILE_FORMATS)} only and this file has {other[0]} "
             f"layers: it loads through ComfyUI's own loader, which this model could not use here")
            if core_reads(other[0]) else needs_newer_comfyui(other[0]))
    out = {k: v for k, v in sd.items() if not (k.endswith(_AUX) and k.rsplit(".", 1)[0] in resolved)}
    for layer, fmt in resolved.items():
        w, s = sd[layer + ".weight"], sd.get(layer + ".weight_scale")
        if s is None:
            raise ModelsmithError(f"{layer}: quantized weight without weight_scale")
        if fmt == "nvfp4":
            n, k2 = w.shape
            if layer + ".weight_scale_2" not in sd:
                raise ModelsmithError(f"{layer}: nvfp4 weight without weight_scale_2")
            out[layer + ".weight_scale"] = k_nvfp4.from_blocked(s, n, k2 * 2 // k_nvfp4.BLOCK).clone(
                memory_format=torch.contiguous_format)
            out[layer + ".weight_scale_2"] = sd[layer + ".weight_scale_2"].float().reshape(())
        else:
            out[layer + ".weight"] = w.to(getattr(torch, fmt)) if w.dtype != getattr(torch, fmt) else w
            out[layer + ".weight_scale"] = s.float().reshape(())
    return out, resolved


def logical_shape(sd: dict, layer: str, fmt: str):
    w = sd[layer + ".weight"]
    return (w.shape[0], logical_columns(fmt, w.shape[1])) if w.ndim == 2 else tuple(w.shape)


def attach_quantized(dit: torch.nn.Module, sd: dict, layers: dict, prefix: str = "") -> None:
    """Put QuantLinear modules holding the file's tensors where `layers` (keys with `prefix`) are."""
    for full, fmt in layers.items():
        name = full[len(prefix):] if prefix and full.startswith(prefix) else full
        try:
            old = dit.get_submodule(name)
        except AttributeError:
            raise ModelsmithError(f"quantized layer {full} does not exist in this model") from None
        n, k = logical_shape(sd, full, fmt)
        if not isinstance(old, torch.nn.Linear) or tuple(old.weight.shape) != (n, k):
            raise ModelsmithError(f"quantized layer {full} ({n}x{k}) does not fit the model's {type(old).__name__}")
        q = QuantLinear(fmt, sd[full + ".weight"], sd[full + ".weight_scale"], sd.get(full + ".weight_scale_2"),
                        sd.get(full + ".bias"), k, n)
        parent_name, _, child = name.rpartition(".")
        setattr(dit.get_submodule(parent_name) if parent_name else dit, child, q)


def _calibration_calls(patcher, positive, percents=(0.2, 0.5, 0.8), size=256, seed=0) -> list[tuple]:
    """[(sigma, denoised output)] of `patcher` on one calibration latent (seeded noise, `size` px square,
    the model's own latent shape) at three noise levels, the conditioning encoded and the model called
    as core's sampler does (encode_model_conds, calc_cond_batch)."""
    import comfy.model_management as mm
    import comfy.sampler_helpers
    import comfy.samplers
    fmt = patcher.get_model_object("latent_format")
    ms = patcher.get_model_object("model_sampling")
    ratio = getattr(fmt, "spacial_downscale_ratio", 8)
    shape = [1, fmt.latent_channels] + [1] * (getattr(fmt, "latent_dimensions", 2) - 2) + [size // ratio] * 2
    g = torch.Generator().manual_seed(seed)
    latent, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mm.load_models_gpu([patcher])
    device = patcher.load_device
    out = []
    for p in percents:
        sigma = torch.tensor([float(ms.percent_to_sigma(p))])
        x = ms.noise_scaling(sigma, noise, latent)
        conds = comfy.sampler_helpers.convert_cond(positive)
        conds = comfy.samplers.encode_model_conds(patcher.model.extra_conds, conds, x, device, "positive")
        patcher.pre_run()  # what a sampler does around its calls (the model's current patcher, hooks)
        try:
            with torch.no_grad():
                y = comfy.samplers.calc_cond_batch(patcher.model, [conds], x.to(device), sigma.to(device),
                                                   patcher.model_options)[0]
        finally:
            patcher.cleanup()
        out.append((float(sigma), y.float().cpu()))
    return out


def denoiser_errors(base, quantized, positive) -> list[tuple]:
    """[(sigma, relative error)]: the quantized model's denoised output against the unquantized one's on
    the calibration latent at three noise levels."""
    return [(s, float((q - b).norm() / b.norm().clamp_min(1e-30)))
            for (s, b), (_, q) in zip(_calibration_calls(base, positive), _calibration_calls(quantized, positive))]


def calibration_inputs(patcher, positive) -> dict:
    """{linear layer name: input rows} the denoiser's layers see on the calibration calls."""
    from ..core.qplan import capture_inputs
    return capture_inputs(patcher.model.diffusion_model, lambda: _calibration_calls(patcher, positive))
