"""Header-only inspection: what a checkpoint file is and how it wants to be run.

Fills the inspection contract of reference.md section 1. safetensors files are answered from the
header (plus one small tensor for SD2's v/eps test, and the tiny `comfy_quant` tensors); pickles
go through the allowlist guard. Nothing here imports torch unless the file is a pickle.
"""
from __future__ import annotations

import math
import os

from . import families as fam
from . import companions, registry
from .errors import ModelsmithError, a
from .families import CORE_ANIMA
from ..kernels.formats import FP8_FORMATS, QUANT_FORMATS, SCALE_SUFFIXES, logical_columns, nf4_aux_keys, nf4_weights
from .files import check_regular_file
from .safetensors_io import (FLOAT_DTYPES, PICKLE_EXTS, decode_floats, file_format, quant_format_of, read_header,
                             read_tensor_bytes, small_json_object)

SAFETENSORS_EXTS = (".safetensors", ".sft")
MODEL_EXTS = SAFETENSORS_EXTS + PICKLE_EXTS

ST_TO_NAME = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2",
              "F64": "fp64", "U8": "uint8", "I8": "int8"}
MARKER_KEYS = ("v_pred", "ztsnr", "edm_mean", "edm_std", "edm_vpred.sigma_max", "edm_vpred.sigma_min",
               "scaled_fp8")



def _quant_formats(header, den: dict, prefix: str, metadata: dict) -> dict:
    """Denoiser layer -> format, from per-layer `comfy_quant` tensors or `_quantization_metadata`."""
    formats = {}
    meta = metadata.get("_quantization_metadata")
    if meta:
        try:
            layers = small_json_object(meta, "_quantization_metadata").get("layers", {})
        except ModelsmithError:
            layers = {}
        for layer, conf in (layers.items() if isinstance(layers, dict) else ()):
            formats[layer[len(prefix):] if prefix and layer.startswith(prefix) else layer] = quant_format_of(conf) or "?"
    for name, (dtype, shape) in den.items():
        if not name.endswith(".comfy_quant"):
            continue
        layer = name[: -len(".comfy_quant")]
        formats[layer] = "?"
        if header is not None and math.prod(shape) <= 4096:
            try:
                conf = small_json_object(read_tensor_bytes(header, prefix + name, 4096), name)
                formats[layer] = quant_format_of(conf) or "?"
            except ModelsmithError:
                pass
    return formats


def _denoiser_stats(den: dict, quant: dict) -> tuple[str, int]:
    """(precision, parameter count) of the denoiser in one pass.

    Precision is the storage of its matrices (2-D and up), quantization first; nvfp4 weights count
    two parameters per byte; scales, markers and comfy_quant tensors are not parameters."""
    weight_by_dtype, params, legacy_fp8 = {}, 0, False
    nf4 = nf4_weights(den)
    nf4_aux = nf4_aux_keys(nf4)
    for name, (dtype, shape) in den.items():
        if name in MARKER_KEYS or name.endswith(SCALE_SUFFIXES):
            legacy_fp8 = legacy_fp8 or name == "scaled_fp8" or name.endswith(".scale_weight")
            continue
        if name in nf4_aux:
            continue
        n = math.prod(shape)
        if quant and name.endswith(".weight") and name[:-7] in quant and len(shape) == 2:
            n = shape[0] * logical_columns(quant[name[:-7]], shape[1])
        elif name in nf4:
            n *= 2
        params += n
        if len(shape) >= 2 and dtype in FLOAT_DTYPES:
            weight_by_dtype[dtype] = weight_by_dtype.get(dtype, 0) + n
    if nf4 and not quant:
        precision = "mixed"  # not a value of the inspection contract; a warning names it
    elif quant:
        fmts = set(quant.values())
        precision = "nvfp4" if fmts == {"nvfp4"} else "fp8-scaled" if fmts <= FP8_FORMATS else "mixed"
    elif legacy_fp8:
        precision = "fp8-scaled"
    elif weight_by_dtype:
        dtype, count = max(weight_by_dtype.items(), key=lambda kv: kv[1])
        precision = ST_TO_NAME.get(dtype, dtype.lower()) if count >= 0.99 * sum(weight_by_dtype.values()) else "mixed"
    else:
        precision = "mixed"
    return precision, params


_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".hada_w1_a",
                  ".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".oft_blocks", ".diff", ".diff_b")
_KIND_HINTS = {
    "lora": " It looks like a LoRA (or LyCORIS): load it with LoraLoader / LoraLoaderModelOnly on top of a checkpoint.",
    "embedding": " It looks like a textual-inversion embedding: put it in models/embeddings and write embedding:NAME in the prompt.",
    "controlnet": " It looks like a ControlNet: load it with ControlNetLoader.",
    "upscaler": " It looks like an image upscale model (ESRGAN-style): load it with UpscaleModelLoader.",
    "vae": " It is a standalone VAE: load it with VAELoader.",
    "text-encoder": " It is a standalone text encoder: load it with CLIPLoader / DualCLIPLoader.",
}


def kind_hint(kind: str | None) -> str:
    """Which core loader takes a file without a denoiser, as one sentence (empty when unknown)."""
    return _KIND_HINTS.get(kind, "")


def _mostly_lora(names) -> bool:
    from .lora import split_key
    names = list(names)
    return bool(names) and sum(1 for n in names if split_key(n)) >= 0.9 * len(names)


def _other_kind(names) -> str | None:
    """What a file without a denoiser most likely is, from its key names alone (a hint, not a contract)."""
    names = list(names)
    if any(n.endswith(_LORA_SUFFIXES) or n.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for n in names):
        return "lora"
    if any(n.startswith(("control_model.", "controlnet_", "input_hint_block.")) for n in names):
        return "controlnet"
    if names and (set(names) <= {"emb_params", "clip_l", "clip_g", "string_to_token", "name", "step",
                                 "sd_checkpoint", "sd_checkpoint_name"}
                  or any(n.startswith("string_to_param.") for n in names)):
        return "embedding"
    if any(".RDB" in n or n.startswith(("conv_first.", "body.0.rdb", "model.1.sub.")) for n in names):
        return "upscaler"
    return None


def inspect_tensors(tensors: dict, metadata: dict | None = None, *, header=None, source="safetensors",
                    values=None) -> dict:
    """The inspection report for a {name: (dtype, shape)} table.

    `values(name)` returns one small tensor's values as floats (or None); by default it reads them
    from the safetensors `header`'s file. Only SD2's v/eps test needs it."""
    if values is None:
        values = (lambda name: _read_values(header, tensors, name)) if header is not None else (lambda name: None)
    metadata = metadata or {}
    names = tensors.keys()
    warnings = []
    layout, prefix = fam.find_denoiser(tensors)
    if layout is not None and _mostly_lora(names):  # a LoRA in checkpoint names (net.*, diffusion_model.*)
        layout, prefix = None, None
    report = {"family": "unknown", "variant": None, "layout": layout, "components": {},
              "precision": None, "prediction": None, "ztsnr": False, "ema": False, "params": 0,
              "recommended": registry.settings(None), "warnings": warnings}
    den = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)} if prefix is not None else {}
    if prefix == "" and layout is not None:
        den = {k: v for k, v in tensors.items() if not k.startswith(fam.VAE_PREFIXES + ("text_encoders.", "conditioner.", "cond_stage_model."))}
    family, variant, details = fam.detect_family(den, layout) if den else ("unknown", None, {})
    heads = fam.prefix_set(names)
    vae = "first_stage_model." in heads or (layout == "checkpoint" and "vae." in heads)
    encoders = fam.text_encoders_in(heads)
    report["components"] = {"denoiser": bool(den), "vae": vae, "text_encoders": encoders}
    report["family"], report["variant"] = family, variant
    report["details"] = details
    if vae and den:
        rec = registry.get(family)
        want, got = rec.vae_signature if rec else None, fam.vae_signature(tensors)
        if want and got and want != got:
            report["vae_mismatch"] = True
            warnings.append(f"Its baked-in VAE is {a(fam.describe_vae(got))}, but {a(family)} model decodes with "
                            f"{a(fam.describe_vae(want))}: images come out broken. Load a VAE of its family with "
                            f"VAELoader, or convert with that VAE baked in.")

    if not den:
        report["layout"] = None
        te = companions.text_encoder(tensors)
        if ("encoder." in heads or "decoder." in heads) and not te:
            report["components"]["vae"] = True
            report["kind"] = "vae"
            report["vae"] = companions.vae(tensors)
        elif te:
            report["kind"] = "text-encoder"
            report["components"]["text_encoders"] = [te["id"]]
            report["text_encoder"] = te
        elif any(k.startswith(("text_model.", "encoder.block.", "shared.")) for k in names):
            report["kind"] = "text-encoder"
        else:
            report["kind"] = _other_kind(names)
        if report.get("kind") == "lora":
            from .lora import analyse
            report["lora"] = analyse(tensors, values)
        hint = kind_hint(report.get("kind"))
        warnings.append("No denoiser (UNet/DiT) found in this file; it is not a checkpoint to sample from." + hint)

    if "scaled_fp8" in tensors and den:
        den.setdefault("scaled_fp8", tensors["scaled_fp8"])
    quant = _quant_formats(header, den, prefix or "", metadata)
    precision, report["params"] = _denoiser_stats(den, quant)
    report["precision"] = precision if den else None  # the contract: the denoiser's (a VAE's or text encoder's is in its own object)
    if quant:
        report["quantized_layers"] = len(quant)
        counts = {}
        for fmt in quant.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        report["quantization"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        high = {}  # the denoiser's other matrices, as a quantized file's third count ("bf16 52")
        for name, info in den.items():
            if name.endswith(".weight") and len(info[1]) == 2 and name[:-7] not in quant \
                    and info[0] in ("F32", "F16", "BF16"):
                high[info[0].lower()] = high.get(info[0].lower(), 0) + 1
        if high:
            report["unquantized_layers"] = high
        q = metadata.get("modelsmith.quantization")
        if q:  # the quality report the pack's quantizer wrote
            try:
                rep_q = small_json_object(q, "modelsmith.quantization")
                report["quantization_quality"] = {k: rep_q[k] for k in ("mean_error", "worst_error", "worst_layer",
                                                                        "measure") if k in rep_q}
            except ModelsmithError:
                warnings.append("The file's modelsmith.quantization report is damaged; ignored.")
        unknown = sorted(f for f in counts if f not in QUANT_FORMATS)
        if unknown:
            warnings.append("Quantized layers in a format neither Modelsmith nor any ComfyUI it knows reads: "
                            + ", ".join(unknown) + ".")

    # prediction
    pred = None
    rec = registry.get(family)
    if rec and rec.prediction == "flow":
        pred = "flow"
    elif rec and rec.prediction == "eps":
        if "edm_vpred.sigma_max" in tensors:
            pred = "v-edm"
        elif "edm_mean" in tensors or "edm_std" in tensors:
            pred = "edm"
        elif "v_pred" in tensors:
            pred = "v"
        elif family == "sd2" and report["details"].get("in_channels") == 4:
            pred = _sd2_prediction(values, tensors, layout, report)
        else:
            pred = "eps"
    report["prediction"] = pred
    report["ztsnr"] = "ztsnr" in tensors
    report["ema"] = "model_ema." in heads and any(
        k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates") for k in names)

    # recommended settings: the record's, with the variant's (v-prediction, schnell, ...) over them
    report["recommended"] = registry.settings(family, variant, pred)

    # ModelSpec metadata: reported, never trusted over tensors
    spec = {k[len("modelspec."):]: v for k, v in metadata.items() if k.startswith("modelspec.")}
    if spec:
        report["modelspec"] = spec
        mpred = spec.get("prediction_type")
        if mpred and pred in ("eps", "v"):
            mp = {"epsilon": "eps", "eps": "eps", "v": "v", "v_prediction": "v"}.get(mpred.lower())
            if mp and mp != pred:
                warnings.append(f"The ModelSpec metadata says prediction '{mpred}' but the tensors say '{pred}'; "
                                f"Modelsmith follows the tensors. If the file really is {mp}, set the "
                                f"loader's prediction override.")

    _check_position_ids(report, tensors, values)
    _warn(report, tensors, source)
    return report


def _check_position_ids(report, tensors, values) -> None:
    """Damaged CLIP position ids (an old A1111 Add Difference merge): which positions are off."""
    damaged = {}
    for key in fam.position_ids_keys(tensors):
        dtype, shape = tensors[key]
        vals = values(key)
        if vals is None or len(vals) > 1024:
            continue
        off = fam.damaged_positions(dtype, vals)
        if off is not None:
            damaged[key] = {"dtype": dtype, "positions": off, "values": [float(f"{vals[i]:.7g}") for i in off[:8]]}
    if not damaged:
        return
    report["position_ids"] = damaged
    parts = []
    for key, d in damaged.items():
        where = key.split(".transformer.")[0]
        if d["positions"]:
            shown = ", ".join(f"{i} (stored {v:.7g})" for i, v in zip(d["positions"][:8], d["values"]))
            more = f" and {len(d['positions']) - 8} more" if len(d["positions"]) > 8 else ""
            parts.append(f"{where}: positions {shown}{more}")
        else:
            parts.append(f"{where}: stored as {d['dtype']} instead of integers")
    report["warnings"].append(
        "Damaged CLIP position_ids (" + "; ".join(parts) + "), as AUTOMATIC1111's Add Difference merges made them "
        "before 2023-01-15: tools that use the stored ids (A1111, Forge, diffusers) weaken or ignore those token "
        "positions; ComfyUI rebuilds them. `modelsmith convert` or the Model Doctor's position-ids fix writes exact ones.")


def _read_values(header, tensors, name):
    try:
        return decode_floats(tensors[name][0], read_tensor_bytes(header, name, 1 << 16))
    except ModelsmithError:
        return None


def _sd2_prediction(values, tensors, layout, report):
    """ComfyUI's test: SD2-768-v when the std of one norm bias exceeds 0.09."""
    name = fam.SD2_V_PROBE.get(layout)
    vals = values(name) if name in tensors else None
    if not vals:
        return None
    import statistics
    std = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    report["details"]["sd2_probe_std"] = round(std, 5)
    return "v" if std > 0.09 else "eps"


def _warn(report, tensors, source):
    w = report["warnings"]
    fam_, pred, comps = report["family"], report["prediction"], report["components"]
    if source == "pickle":
        w.append("This is a pickle file (.ckpt/.pt): loading it in other tools can run code hidden in it. "
                 "Modelsmith reads it only through an allowlist; convert it to .safetensors.")
    rec = registry.get(fam_)
    if rec and rec.vae_fp16_overflow:
        w.append("The SDXL VAE overflows to NaN in fp16: decode in bf16/fp32 or use sdxl-vae-fp16-fix "
                 "(ModelsmithVAEDecode retries automatically).")
    if report["ztsnr"]:
        w.append("Zero terminal SNR: use CFG <= 5 with CFG rescale ~0.7. Merging it with an eps model "
                 "weakens or removes the ZTSNR effect.")
        if pred != "v":
            w.append("A ztsnr marker without v-prediction: likely a merge of a ZTSNR v-pred model with an eps model.")
    if pred == "v" and fam_ == "sdxl" and not report["ztsnr"]:
        w.append("v-prediction SDXL without a ztsnr marker: if the model card says ZTSNR, set prediction to v+ztsnr.")
    if fam_ == "sd2":
        w.append("No .yaml file is needed: the prediction type is detected from the weights.")
    if report["layout"] == "checkpoint" and comps["denoiser"]:
        if not comps["vae"]:
            need = rec.vae if rec else "a VAE"
            w.append(f"No VAE in this file: load {need} with a VAE loader.")
        if not comps["text_encoders"]:
            w.append("No text encoder in this file: load the family's text encoder(s) separately.")
    elif report["layout"] in ("diffusion-model", "diffusers") and rec:
        encs, vae = list(rec.text_encoders), rec.vae
        if report["details"].get("text_encoder"):  # read from the file (Anima's adapter input width)
            encs = [report["details"]["text_encoder"]]
        w.append(f"Denoiser only: also load text encoder(s) {', '.join(encs)} and {vae}.")
    if fam_ == "anima":
        _warn_anima(report["details"], w)
    if report["precision"] == "fp16" and rec and rec.fp16_overflow:
        w.append("The Cosmos/Anima residual stream overflows fp16: run it through ModelsmithModelComputeDtype "
                 "fp16 (fp32 residual) or in bf16.")
    nf4 = len(nf4_weights(tensors))
    if nf4:
        w.append(f"bitsandbytes NF4 weights ({nf4} layers): ComfyUI's stock loaders cannot read them; "
                 "`python -m modelsmith convert` dequantizes them to fp16/bf16 safetensors.")
    if report["family"] == "unknown" and comps["denoiser"]:
        w.append("Unknown model family: Modelsmith does not recognise this denoiser's layout.")


def _warn_anima(d: dict, w: list) -> None:
    """Header-only facts (the CLI); inside ComfyUI the running core is asked as well (core_probe)."""
    blocks, since = d.get("blocks"), d.get("comfyui_loads_whole_since")
    if d.get("adapter_blocks") and not d.get("core_adapter_fits"):
        w.append(f"Its LLM adapter ({d.get('adapter_blocks')} blocks, {d.get('adapter_dim')} wide, reading "
                 f"{d.get('adapter_source_dim')}-wide states) is not the one ComfyUI's native Anima builds; load it "
                 f"with Modelsmith's Anima loader.")
    elif since and since == CORE_ANIMA["any_depth_since"]:
        w.append(f"A {blocks}-block Anima: ComfyUI's stock loaders build it whole in {since}; older native "
                 f"Anima builds only {CORE_ANIMA['base_blocks']} blocks and gives broken images without an error "
                 f"(Modelsmith's Anima loader builds all {blocks} on any ComfyUI).")
    if d.get("extra_modules"):
        w.append("Modules beyond the Cosmos DiT and LLM adapter: " + ", ".join(d["extra_modules"]) +
                 " (Modelsmith's loader does not know them and refuses the file rather than drop them).")


def pickle_not_opened(path: str) -> dict:
    """The report of a pickle checkpoint a folder scan lists without unpickling it: the static
    pre-scan (opcodes walked, nothing executed, bounded) and the file's size; what the tensors are is
    known only once the file alone is inspected (in the limited child) or converted."""
    from .pickle_scan import prescan
    if os.path.getsize(path) == 0:
        raise ModelsmithError(f"{path}: empty file (0 bytes); the download or copy did not finish")
    prescan(path)  # refuses a malicious or bomb-shaped file with a sentence; executes nothing
    return {"family": "unknown", "variant": None, "layout": None, "kind": "pickle", "components": {},
            "precision": None, "prediction": None, "ztsnr": False, "ema": False, "params": 0,
            "recommended": registry.settings(None), "not_opened": True,
            "warnings": ["A pickle checkpoint, not opened: a folder scan never unpickles. Inspect this file alone "
                         "(read in a limited child process) or convert it to safetensors."],
            "file": {"path": path, "format": "pickle", "size": os.path.getsize(path)}}


def inspect_file(path: str | os.PathLike, *, open_pickles: bool = True) -> dict:
    """The inspection report of one file. A pickle is read in a limited child process
    (core/pickle_child.py), never here; with `open_pickles=False` (folder scans) it is not read at all."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelsmithError(f"{path}: is a folder; use inspect_dir")
    check_regular_file(path)
    if file_format(path) == "pickle":
        if not open_pickles:
            return pickle_not_opened(path)
        from .pickle_child import pickle_table
        tensors, probe = pickle_table(path, probe_names=tuple(fam.SD2_V_PROBE.values()) + fam.POSITION_IDS_KEYS)
        report = inspect_tensors(tensors, {}, source="pickle", values=probe.get)
        report["file"] = {"path": path, "format": "pickle", "size": os.path.getsize(path)}
        return report
    header = read_header(path)
    tensors = {k: (t.dtype, t.shape) for k, t in header.tensors.items()}
    report = inspect_tensors(tensors, header.metadata, header=header)
    report["file"] = {"path": path, "format": "safetensors", "size": header.file_size,
                      "bytes_read": header.bytes_read}
    if header.metadata:
        report["metadata_keys"] = sorted(header.metadata)[:50]
    return report


def inspect_dir(root: str | os.PathLike):
    """Yield (path, report or error string) for every model file under root."""
    unreadable = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable.append):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(MODEL_EXTS):
                p = os.path.join(dirpath, fn)
                try:
                    yield p, inspect_file(p, open_pickles=False)
                except ModelsmithError as e:
                    yield p, str(e)
                except (OSError, ValueError, RuntimeError, MemoryError) as e:  # one bad file never stops the scan
                    yield p, f"{p}: could not be inspected ({type(e).__name__}: {str(e)[:200]})"
    for e in unreadable:
        yield e.filename, f"{e.filename}: folder could not be read ({e.strerror}); skipped"
