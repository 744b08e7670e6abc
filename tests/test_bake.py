"""Bake LoRAs into a model (issue 27, point 2): the baked file's weights equal the weights ComfyUI's own
LoRA code gives at run time (comfy.sd.load_lora_for_models, what LoraLoader calls) at the same
strengths, denoiser and text encoders alike, and it samples the same latent; every LoRA form the
pack knows (kohya LoRA / LoCon, PEFT, LoHa, LoKr, text-encoder parts, OpenCLIP's fused q/k/v); a LoRA
that does not fit is one sentence before anything is written."""
from __future__ import annotations

import subprocess
import sys

import pytest
import safetensors.torch
import torch

pytestmark = pytest.mark.runtime


def _sdxl_lora(model_sd):
    """A kohya LoRA over a tiny SDXL: linear and conv (LoCon) layers, LoHa and LoKr modules, and both
    text encoders (CLIP-L by HF names, OpenCLIP-G's q/k/v by HF names into its fused in_proj)."""
    g = torch.Generator().manual_seed(5)
    sd = {}
    unet = [k for k in model_sd if k.startswith("model.diffusion_model.") and k.endswith(".weight")]
    lin = [k for k in unet if model_sd[k].ndim == 2 and ("attn1.to_q" in k or "attn2.to_v" in k or "proj_in" in k)][:4]
    conv = [k for k in unet if model_sd[k].ndim == 4 and model_sd[k].shape[-1] == 3 and "in_layers" in k][:1]

    def name(k):
        return "lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
    for k in lin[:2] + conv:
        w = model_sd[k]
        sd[name(k) + ".lora_down.weight"] = torch.randn(4, *w.shape[1:], generator=g) * 0.1
        sd[name(k) + ".lora_up.weight"] = torch.randn(w.shape[0], 4, *([1] * (w.ndim - 2)), generator=g) * 0.1
        sd[name(k) + ".alpha"] = torch.tensor(2.0)
    w = model_sd[lin[2]]
    for i in (1, 2):
        sd[name(lin[2]) + f".hada_w{i}_a"] = torch.randn(w.shape[0], 4, generator=g) * 0.3
        sd[name(lin[2]) + f".hada_w{i}_b"] = torch.randn(4, w.shape[1], generator=g) * 0.3
    sd[name(lin[2]) + ".alpha"] = torch.tensor(4.0)
    w = model_sd[lin[3]]
    sd[name(lin[3]) + ".lokr_w1"] = torch.randn(2, 2, generator=g) * 0.3
    sd[name(lin[3]) + ".lokr_w2_a"] = torch.randn(w.shape[0] // 2, 3, generator=g) * 0.3
    sd[name(lin[3]) + ".lokr_w2_b"] = torch.randn(3, w.shape[1] // 2, generator=g) * 0.3
    sd[name(lin[3]) + ".alpha"] = torch.tensor(1.5)
    l_width = model_sd["conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"].shape[0]
    g_width = model_sd["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"].shape[1]
    for te, width, mods in (("lora_te1_", l_width, ("self_attn_q_proj", "mlp_fc1")),
                            ("lora_te2_", g_width, ("self_attn_k_proj", "self_attn_out_proj"))):
        for m in mods:
            out_f = model_sd["conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"].shape[0] \
                if m == "mlp_fc1" else width
            p = f"{te}text_model_encoder_layers_0_{m}"
            sd[p + ".lora_down.weight"] = torch.randn(2, width, generator=g) * 0.1
            sd[p + ".lora_up.weight"] = torch.randn(out_f, 2, generator=g) * 0.1
            sd[p + ".alpha"] = torch.tensor(2.0)
    return sd


def _core_weights(patcher) -> dict:
    """{key: weight} of every key core's LoRA code patches, computed by core's own calculate_weight
    (what patching at load time writes), in the weight's dtype."""
    import comfy.lora
    sd = patcher.model.state_dict()
    out = {}
    for key, patches in patcher.patches.items():
        w = sd[key]
        out[key] = comfy.lora.calculate_weight(patches, w.float().clone(), key,  # clone: it adds in place
                                               intermediate_dtype=torch.float32).to(w.dtype)
    return out


def _latent(model, cond):
    import nodes as comfy_nodes
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    return comfy_nodes.common_ksampler(model, 7, 2, 5.0, "euler", "normal", cond, cond, empty)[0]["samples"]


def test_sdxl_baked_equals_cores_lora_at_the_same_strengths(comfy, tiny_files, tmp_path):
    import comfy.sd

    from modelsmith.core.bake import bake
    from modelsmith.nodes.loaders import load_checkpoint_file
    src = tiny_files["sdxl"]
    model_sd = safetensors.torch.load_file(str(src))
    lora_path = tmp_path / "style_lora.safetensors"
    lora_sd = _sdxl_lora(model_sd)
    safetensors.torch.save_file(lora_sd, str(lora_path))
    out = tmp_path / "baked.safetensors"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "merge-lora", str(src), f"{lora_path}:0.8", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    model, clip, _, _ = load_checkpoint_file(str(src))
    m2, c2 = comfy.sd.load_lora_for_models(model, clip, lora_sd, 0.8, 0.8)
    core_m, core_c = _core_weights(m2), _core_weights(c2.patcher)
    assert len(core_m) == 5 and len(core_c) == 4  # every module of the LoRA reached core's model and CLIP
    bmodel, bclip, _, _ = load_checkpoint_file(str(out))
    baked_m, baked_c = bmodel.model.state_dict(), bclip.cond_stage_model.state_dict()
    for k, v in core_m.items():
        assert torch.allclose(baked_m[k], v, rtol=1e-5, atol=1e-6), k
    for k, v in core_c.items():  # the CLIP runs in fp16 here: equal to one fp16 rounding
        key = k[len("cond_stage_model."):] if k.startswith("cond_stage_model.") else k
        assert torch.allclose(baked_c[key].float(), v.float(), rtol=2e-3, atol=1e-3), k
    # the text encoders' hidden states alike (to fp16 rounding), and the denoisers sample alike on one conditioning
    tokens = bclip.tokenize("1girl, smile")
    ours, cores = bclip.encode_from_tokens_scheduled(tokens), c2.encode_from_tokens_scheduled(tokens)
    assert torch.allclose(ours[0][0].float(), cores[0][0].float(), rtol=1e-2, atol=1e-2)
    assert not torch.allclose(ours[0][0].float(), clip.encode_from_tokens_scheduled(tokens)[0][0].float(), atol=1e-3)
    assert torch.allclose(_latent(bmodel, ours), _latent(m2, ours), rtol=1e-4, atol=1e-4)
    base = safetensors.torch.load_file(str(src))
    baked = safetensors.torch.load_file(str(out))
    assert {k: v.dtype for k, v in baked.items()} == {k: v.dtype for k, v in base.items()}
    touched = {k for k in base if not torch.equal(base[k], baked[k]) and not torch.isnan(base[k]).any()}
    assert len(touched) == 9, sorted(touched)  # 5 denoiser weights, CLIP-L q_proj and fc1, OpenCLIP-G in_proj (k), out_proj


def test_anima_baked_equals_cores_lora_peft_and_lokr(comfy, tmp_path):
    import comfy.sd
    import tiny_anima
    from modelsmith.compat.anima import load_anima_model
    from modelsmith.core.bake import bake
    dit = tiny_anima.dit_state_dict(seed=4, blocks=2, dtype=torch.bfloat16)
    src = tmp_path / "anima-tiny.safetensors"
    safetensors.torch.save_file(dit, str(src))
    g = torch.Generator().manual_seed(9)
    lora = {}
    for b in (0, 1):
        w = dit[f"net.blocks.{b}.self_attn.q_proj.weight"]
        p = f"diffusion_model.blocks.{b}.self_attn.q_proj"
        lora[p + ".lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.1
        lora[p + ".lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.1
    w = dit["net.blocks.1.mlp.layer1.weight"]
    lora["diffusion_model.blocks.1.mlp.layer1.lokr_w1"] = torch.randn(2, 2, generator=g) * 0.3
    lora["diffusion_model.blocks.1.mlp.layer1.lokr_w2"] = torch.randn(w.shape[0] // 2, w.shape[1] // 2, generator=g) * 0.1
    lora_path = tmp_path / "anima_lora.safetensors"
    safetensors.torch.save_file(lora, str(lora_path))
    out = tmp_path / "baked.safetensors"
    bake(str(src), [(str(lora_path), 0.6)], str(out))
    model = load_anima_model(safetensors.torch.load_file(str(src)), dtype=torch.bfloat16)
    core_m = _core_weights(comfy.sd.load_lora_for_models(model, None, lora, 0.6, 0)[0])
    assert len(core_m) == 3
    baked_m = load_anima_model(safetensors.torch.load_file(str(out)), dtype=torch.bfloat16).model.state_dict()
    for k, v in core_m.items():  # both rounded once to bf16 from float32
        assert torch.equal(baked_m[k], v), k
    assert safetensors.torch.load_file(str(out))["net.blocks.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


def test_a_lora_that_does_not_fit_is_one_sentence_and_writes_nothing(comfy, tiny_files, tmp_path):
    import tiny_anima

    from modelsmith.core.bake import bake
    from modelsmith.core.errors import ModelsmithError
    dit = tiny_anima.dit_state_dict(seed=4, blocks=2)
    anima = tmp_path / "anima.safetensors"
    safetensors.torch.save_file(dit, str(anima))
    sdxl_lora = tmp_path / "sdxl_lora.safetensors"
    safetensors.torch.save_file(_sdxl_lora(safetensors.torch.load_file(str(tiny_files["sdxl"]))), str(sdxl_lora))
    out = tmp_path / "never.safetensors"
    with pytest.raises(ModelsmithError, match="Nothing was written"):
        bake(str(anima), [(str(sdxl_lora), 1.0)], str(out))
    deep = {f"diffusion_model.blocks.{b}.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64) for b in range(4)}
    deep.update({f"diffusion_model.blocks.{b}.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4) for b in range(4)})
    deep_path = tmp_path / "deep.safetensors"
    safetensors.torch.save_file(deep, str(deep_path))
    with pytest.raises(ModelsmithError, match="blocks"):
        bake(str(anima), [(str(deep_path), 1.0)], str(out))
    dora = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(64, 4),
            "lora_unet_input_blocks_4_1_proj_in.dora_scale": torch.ones(64, 1)}
    dora_path = tmp_path / "dora.safetensors"
    safetensors.torch.save_file(dora, str(dora_path))
    with pytest.raises(ModelsmithError, match="DoRA"):
        bake(str(tiny_files["sdxl"]), [(str(dora_path), 1.0)], str(out))
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
