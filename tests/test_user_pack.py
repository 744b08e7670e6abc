"""What a user sees of the pack's messages: errors typed `modelsmith.ModelsmithError` (not a file
path) in ComfyUI's error reports, sentences with the right article, CLI progress as plain lines in a
log (no carriage returns)."""
import json
import subprocess
import sys

import pytest
import torch

from modelsmith.core.errors import a


@pytest.mark.parametrize("word, expect", [("anima", "an anima"), ("sdxl", "an sdxl"), ("8.0", "an 8.0"),
                                          ("11", "an 11"), ("18-block", "an 18-block"), ("28-block", "a 28-block"),
                                          ("unet", "a unet"), ("upscaler", "an upscaler"), ("lumina2", "a lumina2")])
def test_articles(word, expect):
    assert a(word) == expect


def test_cli_progress_is_plain_lines_in_a_log(tmp_path):
    src = tmp_path / "m.safetensors"
    import safetensors.torch
    safetensors.torch.save_file({f"model.diffusion_model.input_blocks.{i}.0.weight": torch.zeros(8, 4, 3, 3)
                                 for i in range(30)}, str(src))
    r = subprocess.run([sys.executable, "-m", "modelsmith", "convert", str(src), str(tmp_path / "o.safetensors"),
                        "--dtype", "fp16"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "convert: 100% (30/30 tensors)" in r.stderr
    assert len(r.stderr.splitlines()) <= 12


def test_comfyui_reports_the_pack_s_error_type_by_name(server):
    """ComfyUI writes an exception's type as module.name; the pack's reads modelsmith.ModelsmithError
    wherever the pack is installed (inside ComfyUI its module is named after its folder path)."""
    from test_workflows import NO_CLIP_GRAPH
    graph = json.loads(json.dumps(NO_CLIP_GRAPH))
    graph["1"]["inputs"]["ckpt_name"] = "tiny_sdxl.safetensors"
    hist = server.queue_and_wait(graph, timeout=120)
    errors = [m[1] for m in hist.get("status", {}).get("messages", []) if m[0] == "execution_error"]
    assert errors, json.dumps(hist.get("status"))[-800:]
    assert errors[0]["exception_type"] == "modelsmith.ModelsmithError", errors[0]["exception_type"]
    assert "no CLIP is connected" in errors[0]["exception_message"]


def _sdxl_ckpt_table(vae_z=4, vae_rank=4):
    from test_doctor import _sdxl_table
    t = _sdxl_table()
    shape = (512, vae_z, 3, 3) if vae_rank == 4 else (384, vae_z, 3, 3, 3)
    t["first_stage_model.decoder.conv_in.weight" if vae_rank == 4 else "first_stage_model.decoder.conv1.weight"] = \
        ("F16", shape)
    t["first_stage_model.encoder.conv_in.weight"] = ("F16", (128, 3, 3, 3))
    return t


def test_a_checkpoint_with_another_family_s_vae_is_flagged_in_inspect_and_the_doctor(tmp_path):
    from modelsmith.core import doctor
    from modelsmith.core.inspect import inspect_file
    from modelsmith.core.safetensors_io import write_sparse
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    write_sparse(ck / "ok.safetensors", _sdxl_ckpt_table())
    write_sparse(ck / "qwen_vae_inside.safetensors", _sdxl_ckpt_table(16, 5))
    write_sparse(ck / "flux_vae_inside.safetensors", _sdxl_ckpt_table(16, 4))
    assert not inspect_file(ck / "ok.safetensors").get("vae_mismatch")
    for name, what in (("qwen_vae_inside", "16-channel video"), ("flux_vae_inside", "16-channel image")):
        rep = inspect_file(ck / f"{name}.safetensors")
        assert rep["vae_mismatch"] and any(f"baked-in VAE is a {what}" in w
                                           and "an sdxl model decodes with a 4-channel image VAE" in w
                                           for w in rep["warnings"]), rep["warnings"]
    entries = {e["id"]: e for e in doctor.scan({"checkpoints": [str(ck)]})}
    codes = {k: {p["code"] for p in e["problems"]} for k, e in entries.items()}
    assert "vae-mismatch" in codes["checkpoints/qwen_vae_inside.safetensors"]
    assert "vae-mismatch" not in codes["checkpoints/ok.safetensors"]


def test_convert_refuses_to_bake_another_family_s_vae(comfy, tiny_files, anima_files, tmp_path):
    """An SDXL checkpoint with the Qwen-Image VAE baked in was written without a word and failed later
    with 'tuple index out of range'; now it is one sentence and nothing is written."""
    from modelsmith.core.convert import run_convert
    from modelsmith.core.errors import ModelsmithError
    out = tmp_path / "baked.safetensors"
    with pytest.raises(ModelsmithError, match="is a 16-channel video .* VAE, but an sdxl checkpoint decodes with a "
                                              "4-channel image VAE"):
        run_convert(str(tiny_files["sdxl"]), str(out), dtype="fp16", vae=str(anima_files["vae"]))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_doctor_flags_files_in_a_folder_whose_loaders_cannot_use_them(tmp_path):
    from modelsmith.core import doctor
    from modelsmith.core.safetensors_io import write_sparse
    from test_doctor import _anima_table
    ck = tmp_path / "checkpoints"
    (tmp_path / "vae").mkdir()
    ck.mkdir()
    write_sparse(ck / "a_vae.safetensors", {"encoder.conv_in.weight": ("F32", (128, 3, 3, 3)),
                                            "decoder.conv_in.weight": ("F32", (512, 4, 3, 3))})
    write_sparse(ck / "a_lora.safetensors", {"lora_unet_blocks_0_self_attn_q_proj.lora_down.weight": ("BF16", (16, 2048)),
                                             "lora_unet_blocks_0_self_attn_q_proj.lora_up.weight": ("BF16", (2048, 16))})
    write_sparse(ck / "a_dit.safetensors", _anima_table(28))
    write_sparse(ck / "a_checkpoint.safetensors", _sdxl_ckpt_table())
    write_sparse(tmp_path / "vae" / "lora_in_vae.safetensors",
                 {"lora_unet_blocks_0_self_attn_q_proj.lora_down.weight": ("BF16", (16, 2048)),
                  "lora_unet_blocks_0_self_attn_q_proj.lora_up.weight": ("BF16", (2048, 16))})
    entries = doctor.scan({"checkpoints": [str(ck)], "vae": [str(tmp_path / "vae")]})
    why = {e["id"]: " ".join(p["why"] for p in e["problems"] if p["code"] == "misplaced") for e in entries}
    assert "a VAE in checkpoints/" in why["checkpoints/a_vae.safetensors"] and "models/vae/" in why["checkpoints/a_vae.safetensors"]
    assert "a LoRA in checkpoints/" in why["checkpoints/a_lora.safetensors"] and "models/loras/" in why["checkpoints/a_lora.safetensors"]
    assert "a denoiser-only file in checkpoints/" in why["checkpoints/a_dit.safetensors"]
    assert "models/diffusion_models/" in why["checkpoints/a_dit.safetensors"]
    assert why["checkpoints/a_checkpoint.safetensors"] == ""
    assert "a LoRA in vae/" in why["vae/lora_in_vae.safetensors"]


def _node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]()


def test_the_anima_sampler_names_every_input_it_does_not_use(comfy, anima_files):
    model, clip, vae, _ = _node("ModelsmithAnimaLoader").load(
        "anima-tiny.safetensors", "qwen_3_06b_base.safetensors", "qwen_image_vae.safetensors", "auto")
    neg = _node("CLIPTextEncode").encode(clip, "lowres")[0]
    s = _node("ModelsmithAnimaSampler")
    out = s.sample(model, "1girl", "worst quality", "1:1 (1024x1024)", 32, 48, 2, 4.0, "euler", "simple", 1, True,
                   clip=clip, negative=neg)
    text = out["ui"]["text"][0]
    assert "the negative_text box is not" in text
    assert "the width/height widgets (32x48) are not used" in text
    assert "turbo without a turbo LoRA" in text and "steps and cfg widgets are not used" in text
    plain = s.sample(model, "1girl", "", "custom", 32, 32, 1, 4.0, "euler", "simple", 1, False, clip=clip)
    assert "not used" not in plain["ui"]["text"][0] and "turbo" not in plain["ui"]["text"][0]


def test_the_sdxl_sampler_names_what_it_overrides_or_ignores(comfy, tiny_files):
    sd1, clip1 = _node("ModelsmithCheckpointLoader").load("tiny_sd1.safetensors", "auto")[:2]
    p1, n1 = (_node("CLIPTextEncode").encode(clip1, t)[0] for t in ("1girl", "lowres"))
    args = dict(size="custom", width=64, height=64, steps=1, cfg=0.0, cfg_rescale="auto", rescale_phi=0.7,
                sampler_name="euler", scheduler="normal", seed=1, denoise=1.0)
    s = _node("ModelsmithSDXLSampler")
    text = "\n".join(s.sample(sd1, p1, n1, prediction="auto", **args)["ui"]["text"])
    assert "is an sd1 model, not SDXL" in text and "cfg 0 means the recommended CFG for eps: ran at 6" in text
    vmodel, vclip = _node("ModelsmithCheckpointLoader").load("tiny_sdxl_vpred_ztsnr.safetensors", "auto")[:2]
    p, n = (_node("CLIPTextEncode").encode(vclip, t)[0] for t in ("1girl", "lowres"))
    text = "\n".join(s.sample(vmodel, p, n, prediction="eps", **{**args, "cfg": 5.0, "size": "1:1 (1024x1024)"})["ui"]["text"])
    # no SETTINGS wired: forcing eps on a v-pred + ZTSNR model is still named, and the unused widgets too
    assert "prediction eps contradicts the model's own (v+ztsnr" in text
    assert "the width/height widgets (64x64) are not used" in text
