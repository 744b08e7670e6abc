"""Text encoders and VAEs named from their headers (names and shapes, never the file name), with their
precision and the families of the registry they serve. Functions over {name: (dtype, shape)}; no torch.

Some files cannot be told apart from their headers: the SD1, SDXL and SDXL fp16-fix VAEs share one
(4-channel), so do the SD3 and FLUX.1 VAEs (16-channel) and the Qwen-Image and Wan 2.1 VAEs (video
convs): each is named as its group, with every family the group serves. No weight is read to guess
which member it is: the members differ only in trained values, not in anything a header shows."""
from __future__ import annotations

from . import registry
from .families import count_indexed, text_encoder_id, vae_signature

# text encoder id -> (what it is, in words; the file name ComfyUI's templates download it as)
TEXT_ENCODERS = {
    "clip-l": ("CLIP-L (OpenAI ViT-L/14 text model)", "clip_l.safetensors"),
    "clip-g": ("CLIP-G (OpenCLIP ViT-bigG/14 text model)", "clip_g.safetensors"),
    "clip-h": ("CLIP-H (OpenCLIP ViT-H/14 text model)", "open_clip_vit_h.safetensors"),
    "t5xxl": ("T5-XXL v1.1 encoder", "t5xxl_fp16.safetensors"),
    "t5xxl-old": ("T5-XXL v1.0 encoder (Cosmos' \"old\" T5)", "oldt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "qwen3-0.6b": ("Qwen3-0.6B", "qwen_3_06b_base.safetensors"), "qwen3-1.7b": ("Qwen3-1.7B", "qwen_3_1.7b.safetensors"),
    "qwen3-4b": ("Qwen3-4B", "qwen_3_4b.safetensors"), "qwen3-8b": ("Qwen3-8B", "qwen_3_8b_fp8mixed.safetensors"),
    "qwen2.5-vl-7b": ("Qwen2.5-VL-7B (language model)", "qwen_2.5_vl_7b_fp8_scaled.safetensors"),
    "gemma-2-2b": ("Gemma-2-2B", "gemma_2_2b_fp16.safetensors"),
    "mistral-small-3.1": ("Mistral-Small-3.1-24B (language model)", "mistral_3_small_flux2_fp8.safetensors"),
}
# VAE groups: (latent channels, conv kernel rank) -> the group's name
VAE_GROUPS = {(4, 4): "SD VAE (4-channel: SD1 / SD2 / SDXL, incl. sdxl-vae-fp16-fix)",
              (16, 4): "16-channel image VAE (SD3 / FLUX.1 'ae')", (32, 4): "FLUX.2 VAE (32-channel)",
              (16, 5): "Wan 2.1 / Qwen-Image video VAE (16-channel)", (48, 5): "Wan 2.2 video VAE (48-channel)"}


def _shape(t, name):
    v = t.get(name)
    return tuple(v[1]) if v is not None else None


def _strip_prefix(t: dict) -> dict:
    """The table without a wrapper prefix (`text_encoders.x.transformer.`, `cond_stage_model.`, ...)
    when every key has the same one before a known root."""
    roots = ("text_model.", "model.", "encoder.", "shared.", "transformer.", "token_embedding.", "decoder.")
    for k in t:
        for r in roots:
            i = k.find(r)
            if i > 0 and k[:i].endswith(".") and all(x.startswith(k[:i]) for x in t):
                p = k[:i]
                return {x[len(p):]: v for x, v in t.items()}
        break
    return t


def _precision(t: dict) -> str:
    dts = {}
    for _, (dt, shape) in t.items():
        if len(shape) == 2:
            dts[dt] = dts.get(dt, 0) + 1
    if "scaled_fp8" in t:
        return "fp8 (scaled)"
    if not dts:
        return "unknown"
    top = max(dts, key=dts.get)
    return {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}.get(top, top.lower())


def text_encoder(table: dict) -> dict | None:
    """{id, name, width, layers, precision, serves} of a standalone text-encoder file, or None."""
    t = _strip_prefix(table)
    te = None
    width = layers = 0
    if "text_model.embeddings.token_embedding.weight" in t:  # Hugging Face CLIP text model
        width = _shape(t, "text_model.embeddings.token_embedding.weight")[1]
        layers = count_indexed(t, "text_model.encoder.layers")
        te = {768: "clip-l", 1280: "clip-g", 1024: "clip-h"}.get(width)
    elif "token_embedding.weight" in t and any(k.startswith("transformer.resblocks.") for k in t):  # OpenCLIP
        width = _shape(t, "token_embedding.weight")[1]
        layers = count_indexed(t, "transformer.resblocks")
        te = {1280: "clip-g", 1024: "clip-h", 768: "clip-l"}.get(width)
    elif "encoder.block.0.layer.0.SelfAttention.q.weight" in t:  # T5 encoder
        width = _shape(t, "encoder.block.0.layer.0.SelfAttention.q.weight")[1]
        layers = count_indexed(t, "encoder.block")
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in t
        vocab = (_shape(t, "shared.weight") or _shape(t, "encoder.embed_tokens.weight") or (32128,))[0]
        if gated and width == 4096 and vocab == 32128:
            te = "t5xxl"        # v1.1 XXL (gated GELU); UMT5-XXL has the same shapes but a 256k vocabulary
        elif not gated and width == 1024 and layers == 24:
            te = "t5xxl-old"    # v1.0 XXL: d_model 1024, 128 heads of 128, ReLU feed-forward of 65536
    else:
        lang = "model.language_model." if "model.language_model.embed_tokens.weight" in t else "model."
        emb = _shape(t, lang + "embed_tokens.weight")
        if emb:
            vocab, width = emb
            layers = count_indexed(t, lang + "layers")
            if text_encoder_id(t):  # Qwen3 / Qwen3.5 (Anima's and others'), by their q/k norms
                te = text_encoder_id(t)
            elif f"{lang}layers.0.pre_feedforward_layernorm.weight" in t:
                te = "gemma-2-2b" if width == 2304 else None
            elif f"{lang}layers.0.self_attn.q_proj.bias" in t:
                te = "qwen2.5-vl-7b" if width == 3584 else None
            elif vocab == 131072 and width == 5120:
                te = "mistral-small-3.1"
    if te is None:
        return None
    out = {"id": te, "name": TEXT_ENCODERS[te][0] if te in TEXT_ENCODERS else te, "width": width, "layers": layers, "precision": _precision(t),
           "serves": list(registry.served_by_text_encoder(te))}
    if te == "mistral-small-3.1" and layers and layers < 40:
        out["name"] += f" (pruned to {layers} of its 40 layers)"
    return out


def vae(table: dict) -> dict | None:
    """{group, channels, rank, precision, serves} of a VAE file's header, or None."""
    sig = vae_signature(table)
    if sig is None:
        return None
    return {"group": VAE_GROUPS.get(sig, f"{sig[0]}-channel {'video' if sig[1] == 5 else 'image'} VAE"),
            "channels": sig[0], "rank": sig[1], "precision": _precision_any(table),
            "serves": list(registry.served_by_vae(sig))}


def _precision_any(t: dict) -> str:
    dts = {}
    for _, (dt, shape) in t.items():
        if len(shape) >= 2:
            dts[dt] = dts.get(dt, 0) + 1
    top = max(dts, key=dts.get) if dts else None
    return {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}.get(top, (top or "unknown").lower())


# --- choosing a model's companions in a library -------------------------------------------------

_FP8 = ("fp8 (scaled)", "fp8_e4m3fn", "fp8_e5m2")


def precision_order(device: dict) -> tuple:
    """Precisions from most to least suitable for `device` ({"gpu": bool, "vram_gb": float, "bf16": bool}):
    on a CPU the highest precision (it computes in fp32 anyway; fp8 costs a cast and quality); on a GPU
    the 16-bit file it computes in (bf16 first where it has bf16), fp8 first below 16 GB of memory,
    where a 16-bit T5-XXL or LLM encoder would not fit beside the model; fp32 last (twice the memory)."""
    if not device.get("gpu"):
        return ("fp32", "bf16", "fp16") + _FP8
    half = ("bf16", "fp16") if device.get("bf16") else ("fp16", "bf16")
    if (device.get("vram_gb") or 0) < 16:
        return _FP8 + half + ("fp32",)
    return half + _FP8 + ("fp32",)


def _rank(entry: dict, order: tuple, preferred_name: str | None) -> tuple:
    s = entry["summary"]
    precision = (s.get("text_encoder") or s.get("vae") or {}).get("precision")
    name = entry["name"].replace("\\", "/")
    return (order.index(precision) if precision in order else len(order),
            0 if preferred_name and name.rsplit("/", 1)[-1] == preferred_name else 1, name.lower())


def companion_files(entries: list[dict]) -> tuple[dict, dict]:
    """({text encoder id: [entry, ...]}, {vae signature: [entry, ...]}) of scanned library entries
    (core/doctor.scan's, whose `summary` holds the header facts)."""
    tes, vaes = {}, {}
    for e in entries:
        s = e.get("summary") or {}
        if s.get("text_encoder") and e.get("kind", "text_encoders") == "text_encoders":
            tes.setdefault(s["text_encoder"]["id"], []).append(e)
        if s.get("vae") and e.get("kind", "vae") == "vae":
            vaes.setdefault((s["vae"]["channels"], s["vae"]["rank"]), []).append(e)
    return tes, vaes


def plan(family: str, variant: str | None, components: dict, entries: list[dict], device: dict,
         overrides: dict | None = None) -> dict:
    """Which files a model of `family` loads with: {"text_encoders": [{slot, id, name, precision}],
    "clip_type", "vae": {name, precision} | None, "notes": [...], "missing": [...]}. `components`: what
    the model file holds itself (a checkpoint's text encoders and VAE are its own). `overrides`:
    {"text_encoder_1".., "vae": a library name, "none" or "auto"}; a named file must be what the slot
    needs (its header says), else ModelsmithError. Nothing is loaded here."""
    from .errors import ModelsmithError
    rec = registry.get(family)
    if rec is None:
        raise ModelsmithError(f"no companions are known for a {family or 'unrecognised'} model")
    overrides = overrides or {}
    order = precision_order(device)
    tes, vaes = companion_files(entries)
    by_name = {e["name"].replace("\\", "/"): e for e in entries}
    out = {"text_encoders": [], "clip_type": rec.clip_type, "vae": None, "notes": [], "missing": []}
    baked = set(components.get("text_encoders") or [])
    needed = registry.text_encoders(family, variant)
    for i, te in enumerate(needed, 1):
        slot, label, default_file = f"text_encoder_{i}", TEXT_ENCODERS[te][0], TEXT_ENCODERS[te][1]
        choice = overrides.get(slot) or "auto"
        if te in baked and choice == "auto":
            continue
        if choice == "none":
            out["notes"].append(f"{slot}: none ({label} left out on request)")
            continue
        if choice != "auto":
            e = by_name.get(choice.replace("\\", "/"))
            got = ((e or {}).get("summary") or {}).get("text_encoder") if e else None
            if got is None or got["id"] != te:
                what = f"{got['name']}" if got else "not a text encoder this pack can name"
                raise ModelsmithError(f"{slot} '{choice}' is {what}, but {rec.label} reads {label} there: "
                                      f"pick a {label} file or leave it on auto")
            pick, why = e, "chosen"
        elif tes.get(te):
            ranked = sorted(tes[te], key=lambda x: _rank(x, order, default_file))
            pick = ranked[0]
            why = "the only one" if len(ranked) == 1 else \
                f"of {len(ranked)}, the precision that suits this device best"
        else:
            out["missing"].append(to_get(te))
            continue
        precision = pick["summary"]["text_encoder"]["precision"]
        out["text_encoders"].append({"slot": slot, "id": te, "name": pick["name"], "precision": precision})
        out["notes"].append(f"{slot}: {pick['name']} ({label}, {precision}; {why})")
    choice = overrides.get("vae") or "auto"
    if components.get("vae") and choice == "auto":
        return out
    if choice != "auto":
        e = by_name.get(choice.replace("\\", "/"))
        got = ((e or {}).get("summary") or {}).get("vae") if e else None
        if got is None or (got["channels"], got["rank"]) != tuple(rec.vae_signature):
            what = got["group"] if got else "not a VAE this pack can name"
            raise ModelsmithError(f"vae '{choice}' is {what}, but {rec.label} decodes with {rec.vae}: pick that "
                                  f"VAE or leave it on auto")
        pick, why = e, "chosen"
    elif vaes.get(tuple(rec.vae_signature)):
        ranked = sorted(vaes[tuple(rec.vae_signature)], key=lambda x: _rank(x, order, rec.files.get("vae")))
        pick = ranked[0]
        why = "the only one" if len(ranked) == 1 else f"of {len(ranked)}, by precision, then name"
        if len(ranked) > 1 and len(registry.served_by_vae(rec.vae_signature)) > 1:
            why += "; its group's members share one header, so pick with the vae widget if this is not " + rec.vae
    else:
        out["missing"].append(f"{rec.vae} in models/vae")
        return out
    out["vae"] = {"name": pick["name"], "precision": pick["summary"]["vae"]["precision"]}
    out["notes"].append(f"vae: {pick['name']} ({pick['summary']['vae']['group']}, {out['vae']['precision']}; {why})")
    return out


def to_get(te: str) -> str:
    """What to download for a missing text encoder, and where it goes."""
    label, file = TEXT_ENCODERS[te]
    return f"{label}, e.g. {file}, in models/text_encoders"


def missing_sentence(model_name: str, family_label: str, missing: list[str]) -> str:
    return (f"{model_name} is {family_label}, which needs files that are not in the model folders: get "
            + "; ".join(missing) + ", then refresh the node list.")
