"""Text encoders and VAEs named from their headers (names and shapes, never the file name), with their
precision and the families of the registry they serve. Functions over {name: (dtype, shape)}; no torch.

Some files cannot be told apart from their headers: the SD1, SDXL and SDXL fp16-fix VAEs share one
(4-channel), so do the SD3 and FLUX.1 VAEs (16-channel) and the Qwen-Image and Wan 2.1 VAEs (video
convs): each is named as its group, with every family the group serves. No weight is read to guess
which member it is: the members differ only in trained values, not in anything a header shows."""
from __future__ import annotations

from . import registry
from .families import count_indexed, text_encoder_id, vae_signature

# text encoder id -> what it is, in words
TEXT_ENCODERS = {
    "clip-l": "CLIP-L (OpenAI ViT-L/14 text model)", "clip-g": "CLIP-G (OpenCLIP ViT-bigG/14 text model)",
    "clip-h": "CLIP-H (OpenCLIP ViT-H/14 text model)", "t5xxl": "T5-XXL v1.1 encoder",
    "t5xxl-old": "T5-XXL v1.0 encoder (Cosmos' \"old\" T5)",
    "qwen3-0.6b": "Qwen3-0.6B", "qwen3-1.7b": "Qwen3-1.7B", "qwen3-4b": "Qwen3-4B", "qwen3-8b": "Qwen3-8B",
    "qwen2.5-vl-7b": "Qwen2.5-VL-7B (language model)", "gemma-2-2b": "Gemma-2-2B",
    "mistral-small-3.1": "Mistral-Small-3.1-24B (language model)",
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
    out = {"id": te, "name": TEXT_ENCODERS.get(te, te), "width": width, "layers": layers, "precision": _precision(t),
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
