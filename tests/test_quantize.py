"""Quantized saving in ComfyUI's native format: stock loader, inspection, bytes per parameter."""
import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from modelsmith.core.inspect import inspect_file
from modelsmith.core.errors import ModelsmithError
from modelsmith.core.quantize import run_quantize


@pytest.fixture(scope="module")
def mid_sd1_unet(comfy, models_dir, output_dir):
    """An SD1-shaped UNet ComfyUI's stock detection accepts (320 channels, 768 context), fp16."""
    import tiny
    from modelsmith.compat import sized
    cfg = dict(tiny.SD1_UNET, model_channels=320, channel_mult=[1, 2], num_res_blocks=[1, 1],
               transformer_depth=[1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1], context_dim=768)
    p, _ = sized.build_model("sd1", cfg, dtype=torch.float32)
    tiny.randomize(p.model.diffusion_model, 11)
    sd = {k: v.detach().half().contiguous() for k, v in p.model.diffusion_model.state_dict().items()}
    path = models_dir / "diffusion_models" / "mid_sd1_fp16.safetensors"
    safetensors.torch.save_file(sd, str(path))
    yield path
    # ~0.5 GB between them: free the disk for the modules that follow
    for p in (path, path.with_name("mid_sd1_fp8.safetensors"),
              output_dir / "checkpoints" / "mid_sd1_nvfp4_node.safetensors"):
        p.unlink(missing_ok=True)


def _forward(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([500.0]), c_crossattn=ctx).float()


def test_fp8_file_loads_in_stock_unet_loader(comfy, mid_sd1_unet, models_dir):
    import nodes
    out = models_dir / "diffusion_models" / "mid_sd1_fp8.safetensors"
    stats = run_quantize(mid_sd1_unet, out, fmt="fp8")
    assert stats["quantized_layers"] > 10 and stats["bytes_per_param"] <= 1.02
    rep = inspect_file(out)
    assert (rep["family"], rep["precision"]) == ("sd1", "fp8-scaled")
    meta = safetensors.safe_open(str(out), "pt").metadata()
    layers = json.loads(meta["_quantization_metadata"])["layers"]
    assert len(layers) == stats["quantized_layers"] and all(v == {"format": "float8_e4m3fn"} for v in layers.values())
    assert not any(k.startswith(("input_blocks.0.", "time_embed.", "out.")) for k in layers)  # the SDXL/SD1 preset
    base = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet("mid_sd1_fp16.safetensors", "default")[0]
    quant = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet("mid_sd1_fp8.safetensors", "default")[0]
    qtypes = {type(m.weight).__name__ for m in quant.model.diffusion_model.modules() if hasattr(m, "weight") and m.weight is not None}
    assert "QuantizedTensor" in qtypes  # the stock loader built fp8 layers from the file
    a, b = _forward(base), _forward(quant)
    cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    print(f"fp8 denoiser output cosine similarity to fp16: {cos:.5f}")
    assert torch.isfinite(b).all() and cos >= 0.99


def test_nvfp4_file_is_inspected_and_small(comfy, mid_sd1_unet, tmp_path):
    from modelsmith.kernels import nvfp4
    out = tmp_path / "mid_sd1_nvfp4.safetensors"
    stats = run_quantize(mid_sd1_unet, out, fmt="nvfp4")
    assert stats["bytes_per_param"] <= 0.57
    rep = inspect_file(out)
    assert (rep["family"], rep["precision"]) == ("sd1", "nvfp4")
    src, q = safetensors.torch.load_file(str(mid_sd1_unet)), safetensors.torch.load_file(str(out))
    layer = next(k[: -len(".comfy_quant")] for k in q if k.endswith(".comfy_quant"))
    assert json.loads(bytes(q[layer + ".comfy_quant"].tolist())) == {"format": "nvfp4"}
    w = nvfp4.dequantize(q[layer + ".weight"], q[layer + ".weight_scale"], q[layer + ".weight_scale_2"], torch.float32)
    cos = float(torch.nn.functional.cosine_similarity(w.flatten(), src[layer + ".weight"].float().flatten(), dim=0))
    print(f"nvfp4 weight cosine similarity: {cos:.4f}")
    assert cos >= 0.95


def test_anima_preset_and_cli(comfy, tmp_path):
    import tiny_anima
    src = tmp_path / "anima.safetensors"
    safetensors.torch.save_file(tiny_anima.dit_state_dict(blocks=3), str(src))
    out = tmp_path / "anima_fp8.safetensors"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "quantize", str(src), str(out), "--format", "fp8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    q = safetensors.torch.load_file(str(out))
    quantized = {k[: -len(".comfy_quant")] for k in q if k.endswith(".comfy_quant")}
    assert quantized and all(k.startswith("net.blocks.") for k in quantized)
    assert not any(k.startswith(("net.blocks.0.", "net.llm_adapter", "net.final_layer", "net.x_embedder", "net.t_embedder"))
                   for k in quantized)
    assert any(k.startswith("net.blocks.2.") for k in quantized)
    assert inspect_file(out)["precision"] == "fp8-scaled"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "quantize", str(out), str(tmp_path / "again.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "already quantized" in r.stderr


def _overflowing_vae():
    """A tiny SD VAE whose decoder overflows fp16 (activations past 65504) but not bf16/fp32."""
    import tiny
    vae = tiny._tiny_vae(3)
    with torch.no_grad():
        conv = vae.first_stage_model.decoder.conv_in
        conv.weight.mul_(3e4)  # activations past fp16 range right after the latent enters
    return vae


def test_vae_decode_retries_on_nan(comfy):
    import nodes
    vae = _overflowing_vae()
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3}
    vae.first_stage_model.to(torch.float16)
    vae.vae_dtype = torch.float16
    naive = vae.decode(latent["samples"])
    assert not torch.isfinite(naive).all()  # the fp16 trap is real for this VAE
    image, report = nodes.NODE_CLASS_MAPPINGS["ModelsmithVAEDecode"]().decode(latent, vae, "fp16")["result"]
    assert torch.isfinite(image).all() and image.shape == (1, 64, 64, 3)
    assert report.startswith("decoded in bfloat16 after NaN/inf in float16"), report
    assert vae.vae_dtype == torch.float16  # the VAE is left as it was
    image, report = nodes.NODE_CLASS_MAPPINGS["ModelsmithVAEDecode"]().decode(latent, vae, "fp32")["result"]
    assert report == "decoded in float32"


def test_save_quantized_node_over_http(server, mid_sd1_unet, output_dir):
    g = {"1": {"class_type": "ModelsmithSaveQuantized", "inputs": {
        "model_file": "diffusion_models/mid_sd1_fp16.safetensors", "format": "nvfp4", "preset": "auto", "exclude": "",
        "output_name": "mid_sd1_nvfp4_node", "destination": "output/checkpoints", "overwrite": False}}}
    hist = server.queue_and_wait(g)
    assert hist["status"]["status_str"] == "success", hist["status"]
    assert inspect_file(output_dir / "checkpoints" / "mid_sd1_nvfp4_node.safetensors")["precision"] == "nvfp4"


def _keys(path):
    import safetensors
    with safetensors.safe_open(str(path), "pt") as f:
        return set(f.keys())


def _pack_dequantized(path, layer, fmt):
    """A layer of a written file dequantized by the pack's own kernels (float32)."""
    import safetensors
    from modelsmith.core.quantize import dequantize_layer
    with safetensors.safe_open(str(path), "pt") as f:
        parts = {s: f.get_tensor(layer + "." + s) for s in ("weight", "weight_scale", "weight_scale_2")
                 if layer + "." + s in f.keys()}
    return dequantize_layer(parts, fmt, torch.float32)


@pytest.mark.parametrize("fmt", ["fp8", "fp8_e5m2", "int8", "mxfp8", "nvfp4"])
def test_save_quantized_into_diffusion_models_then_core_unet_loader_samples(comfy, mid_sd1_unet, models_dir, fmt):
    """Save Quantized with destination auto puts a denoiser-only file into models/diffusion_models, where
    core Load Diffusion Model (UNETLoader) lists it; core loads it into its own quantized layers (its
    dequantized weights equal the pack's kernels' on the same file) and KSampler samples it. Each format
    where the running ComfyUI reads it (asked of its QUANT_ALGOS; 0.3.75 reads fp8 only)."""
    import comfy.quant_ops
    import folder_paths
    import nodes
    from modelsmith.core.quantize import FORMATS
    if FORMATS[fmt] not in getattr(comfy.quant_ops, "QUANT_ALGOS", {}):
        pytest.skip(f"this ComfyUI does not read {FORMATS[fmt]} files (its QUANT_ALGOS); tested on the runtimes that do")
    from modelsmith.nodes.precision import ModelsmithSaveQuantized
    name = f"mid_sd1_{fmt}_saved"
    out = ModelsmithSaveQuantized().save(f"diffusion_models/{mid_sd1_unet.name}", fmt, "auto", "", name, "auto",
                                         False)["result"][0]
    try:
        assert out.startswith(folder_paths.get_folder_paths("diffusion_models")[0])
        assert f"{name}.safetensors" in folder_paths.get_filename_list("diffusion_models")
        model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(f"{name}.safetensors", "default")[0]
        qt = {n: m for n, m in model.model.diffusion_model.named_modules()
              if type(getattr(m, "weight", None)).__name__ == "QuantizedTensor"}
        assert qt, "core built no quantized layers from the file"
        for name_, m in list(qt.items())[:6]:
            assert getattr(m, "quant_format", FORMATS[fmt]) == FORMATS[fmt]  # 0.3.75's layers do not name it
            core_w = m.weight.dequantize().float()
            pack_w = _pack_dequantized(out, "model.diffusion_model." + name_ if "model.diffusion_model." + name_ + ".weight"
                                       in _keys(out) else name_, FORMATS[fmt])
            assert core_w.shape == pack_w.shape and torch.allclose(core_w, pack_w, rtol=1e-2, atol=1e-6), name_
        g = torch.Generator().manual_seed(1)
        cond = [[torch.randn(1, 77, 768, generator=g), {}]]
        latent = {"samples": torch.zeros(1, 4, 16, 16)}
        (res,) = nodes.common_ksampler(model, 7, 2, 3.0, "euler", "normal", cond, cond, latent)
        assert res["samples"].shape == (1, 4, 16, 16) and torch.isfinite(res["samples"]).all()
        assert res["samples"].std() > 0
    finally:
        import os
        if os.path.exists(out):
            os.unlink(out)


def test_backtracking_exclude_runs_in_linear_time_and_the_server_stays_up(server, mid_sd1_unet, output_dir):
    """Patterns that froze ComfyUI for minutes under a backtracking engine (`.*` twelve times, nested
    repeats) run in linear time now; a backreference, which needs backtracking, is one sentence."""
    import time
    def graph(exclude, name):
        return {"1": {"class_type": "ModelsmithSaveQuantized", "inputs": {
            "model_file": "diffusion_models/mid_sd1_fp16.safetensors", "format": "fp8", "preset": "auto",
            "exclude": exclude, "output_name": name, "destination": "output/checkpoints", "overwrite": False}}}
    t = time.perf_counter()
    hist = server.queue_and_wait(graph(".*.*.*.*.*.*.*.*.*.*.*.*!, (a+)+$, (x|xx)*y", "heavy_exclude"), timeout=300)
    took = time.perf_counter() - t
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[-1500:]
    assert took < 120, took
    for p in output_dir.rglob("heavy_exclude*"):
        p.unlink()
    hist = server.queue_and_wait(graph(r"(.)\1", "never_written"), timeout=120)
    assert hist["status"]["status_str"] == "error"
    msgs = json.dumps(hist["status"].get("messages", []))
    assert "backtracking" in msgs and "Traceback" not in msgs.split("exception_message")[-1][:300]
    assert "devices" in server.get("/system_stats")


def test_save_quantized_mixed_loads_in_core_as_it_is(comfy, mid_sd1_unet):
    """Save Quantized `mixed` within a size between uniform nvfp4 and fp8: per-layer formats chosen by
    measured error, the quality report in the node's text and the file; core's UNETLoader builds each
    layer in its own format and samples."""
    import comfy.quant_ops
    import nodes
    if "nvfp4" not in getattr(comfy.quant_ops, "QUANT_ALGOS", {}):
        pytest.skip("this ComfyUI does not read nvfp4 files (its QUANT_ALGOS): a mixed nvfp4/fp8 file needs 0.29")
    import os
    from modelsmith.nodes.precision import ModelsmithSaveQuantized
    from modelsmith.core.quantize import run_quantize
    uniform = run_quantize(str(mid_sd1_unet), str(mid_sd1_unet.with_name("mid_sd1_u4.safetensors")), fmt="nvfp4")
    budget = 1.1 * os.path.getsize(uniform["output"])  # nvfp4's size + 10%: some layers in fp8
    os.unlink(uniform["output"])
    res = ModelsmithSaveQuantized().save(f"diffusion_models/{mid_sd1_unet.name}", "mixed", "auto", "", "mid_sd1_mixed",
                                         "auto", False, max_gb=budget / 1e9)
    out, text = res["result"][0], res["ui"]["text"][0]
    try:
        assert os.path.getsize(out) <= budget
        assert "quality: " in text and "nvfp4" in text and "float8_e4m3fn" in text and "output error mean" in text, text
        model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(os.path.basename(out), "default")[0]
        formats = {m.quant_format for m in model.model.diffusion_model.modules()
                   if type(getattr(m, "weight", None)).__name__ == "QuantizedTensor"}
        assert formats == {"nvfp4", "float8_e4m3fn"}, formats
        g = torch.Generator().manual_seed(1)
        cond = [[torch.randn(1, 77, 768, generator=g), {}]]
        (r,) = nodes.common_ksampler(model, 7, 2, 3.0, "euler", "normal", cond, cond, {"samples": torch.zeros(1, 4, 16, 16)})
        assert torch.isfinite(r["samples"]).all()
    finally:
        if os.path.exists(out):
            os.unlink(out)


def test_save_quantized_measures_on_the_inputs_layers_see_while_sampling(comfy, mid_sd1_unet):
    """With the loaded model and a calibration prompt, every layer's error is measured on the inputs it
    saw in a few denoiser calls (captured with hooks), and the report says so."""
    import os
    import nodes
    from modelsmith.nodes.precision import ModelsmithSaveQuantized
    model = nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(mid_sd1_unet.name, "default")[0]
    g = torch.Generator().manual_seed(2)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    res = ModelsmithSaveQuantized().save(f"diffusion_models/{mid_sd1_unet.name}", "mixed", "auto", "", "mid_sd1_calib",
                                         "output/checkpoints", False, max_error=0.05, model=model, calibration=positive)
    out = res["result"][0]
    try:
        from modelsmith.core.safetensors_io import read_header
        q = json.loads(read_header(out).metadata["modelsmith.quantization"])
        n = sum(q["formats"].values())
        assert f"on the inputs {n} of {n} layers saw while sampling a calibration prompt" in q["measure"], q["measure"]
        assert q["worst_error"] <= 0.05
        with pytest.raises(ModelsmithError, match="calibration needs both"):
            ModelsmithSaveQuantized().save(f"diffusion_models/{mid_sd1_unet.name}", "fp8", "auto", "", "x",
                                           "output/checkpoints", False, model=model)
    finally:
        if os.path.exists(out):
            os.unlink(out)
