"""Inspection over a corpus built here: full-size header-only files for every family, tiny real ones."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

import corpus
from modelsmith.core.inspect import inspect_file
from modelsmith.core.safetensors_io import read_header

F = torch.float16


def _fill(path, name, data: bytes):
    h = read_header(path)
    t = h.tensors[name]
    assert t.end - t.begin == len(data)
    with open(path, "r+b") as f:
        f.seek(h.data_start + t.begin)
        f.write(data)


def _exp(family, layout, precision, prediction, ztsnr=False, ema=False, variant=None):
    return dict(family=family, layout=layout, precision=precision, prediction=prediction, ztsnr=ztsnr, ema=ema,
                variant=variant)


def _quantize_table(table, fmt):
    """Mark every 2-D weight of the denoiser as a ComfyUI-quantized layer (comfy_quant + scales)."""
    out, quant = {}, {}
    for k, (dt, shape) in table.items():
        if k.endswith(".weight") and len(shape) == 2 and shape[1] % 32 == 0:
            layer = k[: -len(".weight")]
            conf = json.dumps({"format": fmt}).encode()
            quant[layer + ".comfy_quant"] = conf
            if fmt == "nvfp4":
                out[k] = ("U8", (shape[0], shape[1] // 2))
                out[layer + ".weight_scale"] = ("F8_E4M3", (shape[0], shape[1] // 16))
                out[layer + ".weight_scale_2"] = ("F32", ())
            else:
                out[k] = ("F8_E4M3", shape)
                out[layer + ".weight_scale"] = ("F32", ())
            out[layer + ".comfy_quant"] = ("U8", (len(conf),))
        else:
            out[k] = (dt, shape)
    return out, quant


@pytest.fixture(scope="module")
def corpus_files(comfy, tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    cases = {}

    def add(name, table, expected, metadata=None, fills=None):
        p = d / f"{name}.safetensors"
        corpus.write(p, table, metadata)
        for k, v in (fills or {}).items():
            _fill(p, k, v)
        cases[name] = (p, expected)

    add("sd1_fp16", corpus.sd_checkpoint("sd1"), _exp("sd1", "checkpoint", "fp16", "eps"))
    add("sd1_ema_fp32", corpus.sd_checkpoint("sd1", dtype=torch.float32, ema=True), _exp("sd1", "checkpoint", "fp32", "eps", ema=True))
    add("sd1_inpaint", corpus.sd_checkpoint("sd1", in_channels=9), _exp("sd1", "checkpoint", "fp16", "eps", variant="inpaint"))
    add("sd1_ip2p", corpus.sd_checkpoint("sd1", in_channels=8), _exp("sd1", "checkpoint", "fp16", "eps", variant="instruct-pix2pix"))
    add("sd1_unet_only", corpus.unet_table("sd1"), _exp("sd1", "diffusion-model", "fp16", "eps"))
    add("sd1_diffusers", corpus.diffusers_unet("sd1"), _exp("sd1", "diffusers", "fp16", "eps"))
    add("sd2_512_eps", corpus.sd_checkpoint("sd2"), _exp("sd2", "checkpoint", "fp16", "eps"))
    probe = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    g = torch.Generator().manual_seed(0)
    add("sd2_768_v", corpus.sd_checkpoint("sd2"), _exp("sd2", "checkpoint", "fp16", "v"),
        fills={probe: (torch.randn(320, generator=g) * 0.3).half().numpy().tobytes()})
    add("sdxl_fp16", corpus.sd_checkpoint("sdxl"), _exp("sdxl", "checkpoint", "fp16", "eps"))
    add("sdxl_vpred_ztsnr", corpus.sd_checkpoint("sdxl", markers=("v_pred", "ztsnr")), _exp("sdxl", "checkpoint", "fp16", "v", ztsnr=True))
    add("sdxl_vpred", corpus.sd_checkpoint("sdxl", markers=("v_pred",)), _exp("sdxl", "checkpoint", "fp16", "v"))
    add("sdxl_edm", corpus.sd_checkpoint("sdxl", markers=("edm_mean", "edm_std")), _exp("sdxl", "checkpoint", "fp16", "edm"))
    add("sdxl_unet_bf16", corpus.unet_table("sdxl", dtype=torch.bfloat16), _exp("sdxl", "diffusion-model", "bf16", "eps"))
    add("sdxl_diffusers", corpus.diffusers_unet("sdxl"), _exp("sdxl", "diffusers", "fp16", "eps"))
    add("sdxl_refiner", corpus.sd_checkpoint("sdxl-refiner"), _exp("sdxl-refiner", "checkpoint", "fp16", "eps"))
    add("sdxl_modelspec_says_v", corpus.sd_checkpoint("sdxl"), _exp("sdxl", "checkpoint", "fp16", "eps"),
        metadata={"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-xl-v1-base",
                  "modelspec.prediction_type": "v"})
    fp8 = {k: (("F8_E4M3" if len(s) >= 2 and k.startswith("model.diffusion_model.") else dt), s)
           for k, (dt, s) in corpus.sd_checkpoint("sdxl").items()}
    add("sdxl_fp8_e4m3fn", fp8, _exp("sdxl", "checkpoint", "fp8_e4m3fn", "eps"))
    legacy = dict(fp8)
    legacy["scaled_fp8"] = ("F8_E4M3", (0,))
    for k, (dt, s) in fp8.items():
        if dt == "F8_E4M3":
            legacy[k[: -len(".weight")] + ".scale_weight"] = ("F32", ())
    add("sdxl_scaled_fp8", legacy, _exp("sdxl", "checkpoint", "fp8-scaled", "eps"))
    for name, (table, e) in corpus.dit_tables().items():
        add(name, table, _exp(e["family"], e["layout"], e["precision"], e["prediction"], variant=e["variant"]))
    flux_nv, q = _quantize_table(corpus.dit_tables()["flux1_dev"][0], "nvfp4")
    add("flux1_nvfp4", flux_nv, _exp("flux1", "diffusion-model", "nvfp4", "flow", variant="dev"), fills=q)
    flux_fp8, q8 = _quantize_table(corpus.dit_tables()["flux1_dev"][0], "float8_e4m3fn")
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": {
        k[: -len(".comfy_quant")]: {"format": "float8_e4m3fn"} for k in q8}})}
    add("flux1_fp8_comfy_quant", flux_fp8, _exp("flux1", "diffusion-model", "fp8-scaled", "flow", variant="dev"),
        metadata=meta, fills=q8)
    yield cases
    shutil.rmtree(d, ignore_errors=True)


CASES = ["sd1_fp16", "sd1_ema_fp32", "sd1_inpaint", "sd1_ip2p", "sd1_unet_only", "sd1_diffusers", "sd2_512_eps",
         "sd2_768_v", "sdxl_fp16", "sdxl_vpred_ztsnr", "sdxl_vpred", "sdxl_edm", "sdxl_unet_bf16", "sdxl_diffusers",
         "sdxl_refiner", "sdxl_modelspec_says_v", "sdxl_fp8_e4m3fn", "sdxl_scaled_fp8", "sd3_medium", "sd35_large",
         "sd35_medium", "flux1_dev", "flux1_schnell", "flux1_dev_norm_weight", "flux2_dev", "flux2_klein4b", "flux2_klein9b", "qwen_image",
         "lumina2", "z_image", "cosmos_2b", "cosmos_14b", "anima", "anima_tune_32_blocks", "anima_2_9b", "anima_3_8b", "flux1_nvfp4",
         "flux1_fp8_comfy_quant"]


@pytest.mark.parametrize("name", CASES)
def test_corpus_file(corpus_files, name):
    path, exp = corpus_files[name]
    rep = inspect_file(path)
    got = {k: rep[k] for k in exp}
    assert got == exp, rep["warnings"]
    assert rep["file"]["bytes_read"] < 2_000_000
    assert rep["params"] > 0
    for field in ("components", "recommended", "warnings"):
        assert field in rep


def test_full_size_params_and_components(corpus_files):
    rep = inspect_file(corpus_files["sdxl_fp16"][0])
    assert 2.55e9 < rep["params"] < 2.6e9  # the SDXL UNet has 2.567 B parameters
    assert rep["components"] == {"denoiser": True, "vae": True, "text_encoders": ["clip-l", "clip-g"]}
    assert rep["recommended"]["width"] == 1024
    assert any("fp16" in w and "VAE" in w for w in rep["warnings"])
    rep = inspect_file(corpus_files["sd1_fp16"][0])
    assert 8.5e8 < rep["params"] < 8.7e8 and rep["recommended"]["width"] == 512
    assert inspect_file(corpus_files["sd2_768_v"][0])["recommended"]["width"] == 768
    z = inspect_file(corpus_files["sdxl_vpred_ztsnr"][0])
    assert z["recommended"]["cfg"] <= 5 and z["recommended"].get("cfg_rescale") == 0.7
    a = inspect_file(corpus_files["anima_tune_32_blocks"][0])
    assert a["details"]["blocks"] == 32
    assert a["recommended"] == {"width": 1024, "height": 1024, "steps": 30, "cfg": 4.0, "sampler": "er_sde",
                                "scheduler": "simple", "shift": 3.0}
    m = inspect_file(corpus_files["sdxl_modelspec_says_v"][0])
    assert m["modelspec"]["prediction_type"] == "v" and any("ModelSpec" in w for w in m["warnings"])
    u = inspect_file(corpus_files["sd1_unet_only"][0])
    assert any("Denoiser only" in w for w in u["warnings"])


def test_cli_json_and_dir(corpus_files):
    path = corpus_files["sdxl_vpred_ztsnr"][0]
    r = subprocess.run([sys.executable, "-m", "modelsmith", "inspect", str(path), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["family"], rep["prediction"], rep["ztsnr"]) == ("sdxl", "v", True)
    r = subprocess.run([sys.executable, "-m", "modelsmith", "inspect", str(path)], capture_output=True, text=True)
    assert "family" in r.stdout and "sdxl" in r.stdout
    r = subprocess.run([sys.executable, "-m", "modelsmith", "inspect", str(path.parent)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("\n") >= len(CASES)


def test_tiny_real_files(tiny_files):
    assert inspect_file(tiny_files["sd1"])["family"] == "sd1"
    r = inspect_file(tiny_files["sdxl_vpred_ztsnr"])
    assert (r["family"], r["layout"], r["precision"], r["prediction"], r["ztsnr"]) == ("sdxl", "checkpoint", "fp32", "v", True)
    assert r["components"]["vae"] and r["components"]["text_encoders"] == ["clip-l", "clip-g"]


@pytest.mark.parametrize("name", sorted(__import__("tiny_dit").TINY_DIT))
def test_tiny_real_files_of_every_family(comfy, tmp_path, name):
    """Tiny real weights from ComfyUI's own classes, written as safetensors, inspected from the file."""
    import safetensors.torch
    import tiny_dit
    build, family, variant, layout, prediction = tiny_dit.TINY_DIT[name]
    path = tmp_path / f"{name}.safetensors"
    safetensors.torch.save_file(build(), str(path))
    rep = inspect_file(path)
    assert (rep["family"], rep["variant"], rep["layout"], rep["prediction"], rep["precision"]) == \
        (family, variant, layout, prediction, "fp32")
    assert rep["params"] > 0 and rep["file"]["bytes_read"] < 2_000_000


_F16 = torch.float16
OTHER_FILES = {
    "lora": {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight": (4, 640),
             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_up.weight": (640, 4),
             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.alpha": ()},
    "lora_peft": {"diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight": (4, 64),
                  "diffusion_model.blocks.0.self_attn.q_proj.lora_B.weight": (64, 4)},
    "embedding": {"clip_l": (4, 768), "clip_g": (4, 1280)},
    "controlnet": {"control_model.input_hint_block.0.weight": (16, 3, 3, 3),
                   "control_model.zero_convs.0.0.weight": (320, 320, 1, 1)},
    "upscaler": {"model.0.weight": (64, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": (32, 64, 3, 3)},
    "vae": {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)},
}


@pytest.mark.parametrize("name", sorted(OTHER_FILES))
def test_files_without_a_denoiser_say_what_they_look_like(tmp_path, name):
    import safetensors.torch
    p = tmp_path / f"{name}.safetensors"
    safetensors.torch.save_file({k: torch.zeros(s, dtype=_F16) for k, s in OTHER_FILES[name].items()}, str(p))
    rep = inspect_file(p)
    kind = name.split("_")[0]
    assert (rep["family"], rep["components"]["denoiser"], rep["kind"]) == ("unknown", False, kind)
    loader = {"lora": "LoraLoader", "embedding": "embedding:", "controlnet": "ControlNetLoader",
              "upscaler": "UpscaleModelLoader", "vae": "VAELoader"}[kind]
    assert any("No denoiser" in w and loader in w for w in rep["warnings"]), rep["warnings"]


# ComfyUI's detection derives the whole config from shapes only for these tiny models; for the other
# families it fixes widths (Flux 3072, Qwen-Image 3072, ...), so a tiny file cannot be loaded back.
# Their key names are still the running runtime's: test_tiny_real_files_of_every_family builds them
# from that runtime's own classes (0.29's Flux.1 q/k norms come out as `.weight`).
@pytest.mark.parametrize("name", ["sd3", "sd35_medium"])
def test_files_saved_by_the_running_comfyui_keep_their_family(comfy, tmp_path, name):
    """A tiny denoiser loaded and saved back through the running ComfyUI's own save path
    (`comfy.sd.save_checkpoint`, what core Save Checkpoint / ModelSave use), then inspected."""
    import comfy.sd
    import safetensors.torch
    import tiny_dit
    build, family, variant, _, prediction = tiny_dit.TINY_DIT[name]
    model = comfy.sd.load_diffusion_model_state_dict(build())
    assert model is not None, f"the running ComfyUI does not detect the tiny {name}"
    out = tmp_path / f"{name}_saved.safetensors"
    comfy.sd.save_checkpoint(str(out), model)
    saved = safetensors.torch.load_file(str(out))
    assert any(k.startswith("model.diffusion_model.") for k in saved)
    rep = inspect_file(out)
    assert (rep["family"], rep["variant"], rep["prediction"]) == (family, variant, prediction), rep["warnings"]


@pytest.mark.parametrize("name, blocks, variant, encoder, since", [
    ("anima", 28, "2b", "qwen3-0.6b", "any ComfyUI with native Anima (January 2026 on)"),
    ("anima_2_9b", 40, "2.9b", "qwen3-0.6b", "ComfyUI >= 0.33"),
    ("anima_3_8b", 52, "3.8b", "qwen3.5-4b", None), ("anima_tune_32_blocks", 32, "32-block", "qwen3-0.6b", "ComfyUI >= 0.33")])
def test_anima_variant_named_from_the_tensors(corpus_files, name, blocks, variant, encoder, since):
    """Every Anima depth is named from its block count, with the text encoder its adapter reads, and
    (header only, no ComfyUI) the first ComfyUI whose stock loaders load it whole, in the JSON, the
    text report and the warnings."""
    from modelsmith.core.report import format_report
    rep = inspect_file(corpus_files[name][0])
    d = rep["details"]
    assert (rep["family"], rep["variant"], d["blocks"], d["adapter_blocks"]) == ("anima", variant, blocks, 6)
    assert d["text_encoder"] == encoder and d["comfyui_loads_whole_since"] == since and d["extra_modules"] == []
    assert any(f"text encoder(s) {encoder}" in w for w in rep["warnings"])
    depth = [w for w in rep["warnings"] if "older native Anima builds only 28 blocks" in w]
    assert bool(depth) is (since == "ComfyUI >= 0.33") and (not depth or "build it whole in ComfyUI >= 0.33" in depth[0])
    text = format_report(rep)
    assert f"{blocks} blocks, 2048 wide; LLM adapter 6 blocks reading {encoder}" in text
    assert ("loaded whole by ComfyUI's stock loaders in: " + (since or "none")) in text


def test_anima_extra_modules_are_named(tmp_path):
    from modelsmith.core.inspect import inspect_tensors
    t = {"net.x_embedder.proj.1.weight": ("BF16", (2048, 68)), "net.blocks.0.mlp.layer1.weight": ("BF16", (8192, 2048)),
         "net.llm_adapter.blocks.0.cross_attn.q_proj.weight": ("BF16", (1024, 1024)),
         "net.llm_adapter.blocks.0.cross_attn.k_proj.weight": ("BF16", (1024, 2560)),
         "net.llm_adapter.embed.weight": ("BF16", (32128, 1024)),
         "net.text_connector.proj.weight": ("BF16", (1024, 2560)), "net.llm_adapter.connector.weight": ("BF16", (4, 4))}
    rep = inspect_tensors(t)
    assert rep["details"]["extra_modules"] == ["text_connector", "llm_adapter.connector"]
    assert any("text_connector" in w and "refuses" in w for w in rep["warnings"])
