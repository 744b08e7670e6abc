"""Text encoders and VAEs named from their headers (issue 28, point 1): header-only files at their full
real sizes (sparse: a real header, the data a hole), the shapes as the models' published configs and
ComfyUI's text-encoder configs give them. Named by names and shapes; the file name never decides."""
from __future__ import annotations

import pytest

from modelsmith.core import companions, registry
from modelsmith.core.inspect import inspect_file
from modelsmith.core.safetensors_io import write_sparse


def clip_hf(width, layers, ff, dt="F16"):
    t = {"text_model.embeddings.token_embedding.weight": (dt, (49408, width)),
         "text_model.embeddings.position_embedding.weight": (dt, (77, width)),
         "text_model.final_layer_norm.weight": (dt, (width,)), "text_projection.weight": (dt, (width, width))}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{n}.weight"] = (dt, (width, width))
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc2.weight"] = (dt, (ff, width)), (dt, (width, ff))
        t[p + "layer_norm1.weight"] = t[p + "layer_norm2.weight"] = (dt, (width,))
    return t


def open_clip(width, layers):
    t = {"token_embedding.weight": ("F16", (49408, width)), "positional_embedding": ("F16", (77, width)),
         "ln_final.weight": ("F16", (width,)), "text_projection": ("F16", (width, width))}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        t[p + "attn.in_proj_weight"] = ("F16", (3 * width, width))
        t[p + "attn.out_proj.weight"] = ("F16", (width, width))
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_proj.weight"] = ("F16", (4 * width, width)), ("F16", (width, 4 * width))
    return t


def t5(d_model, inner, ff, layers, gated, vocab=32128, dt="F16", scaled=False):
    t = {"shared.weight": ("F16", (vocab, d_model)), "encoder.final_layer_norm.weight": ("F16", (d_model,)),
         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": ("F16", (32, inner // 128))}
    for i in range(layers):
        p = f"encoder.block.{i}.layer."
        for n in "qkv":
            t[p + f"0.SelfAttention.{n}.weight"] = (dt, (inner, d_model))
        t[p + "0.SelfAttention.o.weight"] = (dt, (d_model, inner))
        if gated:
            t[p + "1.DenseReluDense.wi_0.weight"] = t[p + "1.DenseReluDense.wi_1.weight"] = (dt, (ff, d_model))
        else:
            t[p + "1.DenseReluDense.wi.weight"] = (dt, (ff, d_model))
        t[p + "1.DenseReluDense.wo.weight"] = (dt, (d_model, ff))
        if scaled:
            for n in ("0.SelfAttention.q", "0.SelfAttention.k", "0.SelfAttention.v", "0.SelfAttention.o"):
                t[p + n + ".scale_weight"] = ("F32", ())
    if scaled:
        t["scaled_fp8"] = ("F8_E4M3", (0,))
    return t


def llm(vocab, width, layers, q, kv, ff, *, q_norm=False, bias=False, gemma=False, dt="BF16", prefix="model."):
    t = {prefix + "embed_tokens.weight": (dt, (vocab, width)), prefix + "norm.weight": (dt, (width,))}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        t[p + "self_attn.q_proj.weight"] = (dt, (q, width))
        t[p + "self_attn.k_proj.weight"] = t[p + "self_attn.v_proj.weight"] = (dt, (kv, width))
        t[p + "self_attn.o_proj.weight"] = (dt, (width, q))
        t[p + "mlp.gate_proj.weight"] = t[p + "mlp.up_proj.weight"] = (dt, (ff, width))
        t[p + "mlp.down_proj.weight"] = (dt, (width, ff))
        t[p + "input_layernorm.weight"] = t[p + "post_attention_layernorm.weight"] = (dt, (width,))
        if q_norm:
            t[p + "self_attn.q_norm.weight"] = t[p + "self_attn.k_norm.weight"] = (dt, (128,))
        if bias:
            t[p + "self_attn.q_proj.bias"] = (dt, (q,))
            t[p + "self_attn.k_proj.bias"] = t[p + "self_attn.v_proj.bias"] = (dt, (kv,))
        if gemma:
            t[p + "pre_feedforward_layernorm.weight"] = t[p + "post_feedforward_layernorm.weight"] = (dt, (width,))
    return t


def vae(z, rank, ch=128, dt="F32"):
    k = (3, 3, 3) if rank == 5 else (3, 3)
    if rank == 5:  # Wan 2.1 / Qwen-Image names
        return {"encoder.conv1.weight": (dt, (96, 3, *k)), "decoder.conv1.weight": (dt, (384, z, *k)),
                "encoder.head.2.weight": (dt, (2 * z, 384, *k)), "conv1.weight": (dt, (2 * z, 2 * z, 1, 1, 1))}
    t = {"encoder.conv_in.weight": (dt, (ch, 3, *k)), "decoder.conv_in.weight": (dt, (512, z, *k)),
         "encoder.conv_out.weight": (dt, (2 * z, 512, *k)), "decoder.conv_out.weight": (dt, (3, ch, *k))}
    if z == 4:
        t.update({"quant_conv.weight": (dt, (8, 8, 1, 1)), "post_quant_conv.weight": (dt, (4, 4, 1, 1))})
    return t


TEXT_ENCODERS = {
    "clip_l.safetensors": (clip_hf(768, 12, 3072), "clip-l", "fp16"),
    "clip_g.safetensors": (clip_hf(1280, 32, 5120), "clip-g", "fp16"),
    "open_clip_h.safetensors": (open_clip(1024, 24), "clip-h", "fp16"),
    "t5xxl_fp16.safetensors": (t5(4096, 4096, 10240, 24, True), "t5xxl", "fp16"),
    "t5xxl_fp8_e4m3fn.safetensors": (t5(4096, 4096, 10240, 24, True, dt="F8_E4M3"), "t5xxl", "fp8_e4m3fn"),
    "t5xxl_fp8_e4m3fn_scaled.safetensors": (t5(4096, 4096, 10240, 24, True, dt="F8_E4M3", scaled=True), "t5xxl",
                                            "fp8 (scaled)"),
    "oldt5_xxl_fp8_e4m3fn_scaled.safetensors": (t5(1024, 16384, 65536, 24, False, dt="F8_E4M3", scaled=True),
                                                "t5xxl-old", "fp8 (scaled)"),
    "qwen_3_06b_base.safetensors": (llm(151936, 1024, 28, 2048, 1024, 3072, q_norm=True), "qwen3-0.6b", "bf16"),
    "qwen_3_4b.safetensors": (llm(151936, 2560, 36, 4096, 1024, 9728, q_norm=True), "qwen3-4b", "bf16"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": (llm(152064, 3584, 28, 3584, 512, 18944, bias=True, dt="F8_E4M3"),
                                              "qwen2.5-vl-7b", "fp8_e4m3fn"),
    "gemma_2_2b_fp16.safetensors": (llm(256000, 2304, 26, 2048, 1024, 9216, gemma=True, dt="F16"), "gemma-2-2b", "fp16"),
    "mistral_3_small_flux2_bf16.safetensors": (llm(131072, 5120, 40, 4096, 1024, 32768), "mistral-small-3.1", "bf16"),
    "mistral_3_small_flux2_pruned.safetensors": (llm(131072, 5120, 30, 4096, 1024, 32768), "mistral-small-3.1", "bf16"),
}
VAES = {
    "sdxl_vae.safetensors": (vae(4, 4), (4, 4), {"sd1", "sd2", "sdxl", "sdxl-refiner"}),
    "ae.safetensors": (vae(16, 4), (16, 4), {"flux1", "sd3", "sd3.5-medium", "sd3.5-large", "z-image", "lumina2"}),
    "flux2-vae.safetensors": (vae(32, 4), (32, 4), {"flux2"}),
    "qwen_image_vae.safetensors": (vae(16, 5), (16, 5), {"qwen-image", "anima", "cosmos-predict2"}),
}


@pytest.mark.parametrize("name", sorted(TEXT_ENCODERS))
def test_text_encoders_are_named_from_their_headers(tmp_path, name):
    table, want, precision = TEXT_ENCODERS[name]
    path = tmp_path / "some_file.safetensors"  # the name never decides
    write_sparse(path, table)
    rep = inspect_file(path)
    te = rep["text_encoder"]
    assert (rep["kind"], te["id"], te["precision"]) == ("text-encoder", want, precision), te
    assert rep["components"]["text_encoders"] == [want] and rep["precision"] is None
    assert te["serves"] == list(registry.served_by_text_encoder(want)) and te["serves"]
    if name.endswith("pruned.safetensors"):
        assert "pruned to 30 of its 40 layers" in te["name"]


def test_a_prefixed_text_encoder_is_named_too(tmp_path):
    path = tmp_path / "te.safetensors"
    write_sparse(path, {"text_encoders.clip_l.transformer." + k: v for k, v in clip_hf(768, 12, 3072).items()})
    assert inspect_file(path)["text_encoder"]["id"] == "clip-l"


def test_umt5_is_not_taken_for_t5xxl(tmp_path):
    path = tmp_path / "umt5.safetensors"
    write_sparse(path, t5(4096, 4096, 10240, 24, True, vocab=256384))
    assert "text_encoder" not in inspect_file(path)


@pytest.mark.parametrize("name", sorted(VAES))
def test_vaes_are_named_as_their_header_group_with_every_family_it_serves(tmp_path, name):
    table, sig, serves = VAES[name]
    path = tmp_path / "v.safetensors"
    write_sparse(path, table)
    rep = inspect_file(path)
    assert rep["kind"] == "vae" and (rep["vae"]["channels"], rep["vae"]["rank"]) == sig
    assert set(rep["vae"]["serves"]) == serves and rep["vae"]["group"] == companions.VAE_GROUPS[sig]


def test_every_companion_a_record_names_is_recognisable():
    """Each text encoder id and VAE signature in the registry is one this module can name."""
    for f in registry.FAMILIES:
        for te in f.text_encoders + tuple(x for v in f.variants.values() for x in v.get("text_encoders", ())):
            assert te in companions.TEXT_ENCODERS, (f.id, te)
        assert f.vae_signature in companions.VAE_GROUPS, f.id
    named = {v[1] for v in TEXT_ENCODERS.values()}
    needed = {te for f in registry.FAMILIES for te in f.text_encoders}
    assert needed <= named, needed - named  # the corpus holds a file of each
