"""ModelsmithModelComputeDtype: compute dtypes, runtime fp8/nvfp4 weights on tiny SDXL and Anima
denoisers, LoRA on quantized weights (full and low-VRAM loading), and the node in real graphs."""
import pytest
import torch
from modelsmith.core.errors import ModelsmithError


@pytest.fixture(scope="module")
def models(comfy):
    import precision_models as pm
    sdxl, anima = pm.sdxl_bf16(), pm.anima_bf16(blocks=4)
    return {"sdxl": (sdxl, pm.denoise(sdxl, "sdxl")), "anima": (anima, pm.denoise(anima, "anima"))}


class _QLayer:
    """What the tests read of one quantized layer, from either backend: the pack's QuantLinear, or
    current ComfyUI's own quantized layer (a comfy-kitchen QuantizedTensor weight)."""

    def __init__(self, module):
        from modelsmith.kernels.qlinear import QuantLinear
        self.module = module
        self.in_features, self.out_features = module.in_features, module.out_features
        if isinstance(module, QuantLinear):
            self.tensors = (module.weight, module.weight_scale, module.weight_scale_2)
        else:
            w = module.weight
            self.tensors = (w._qdata, w._params.scale, getattr(w._params, "block_scale", None))

    def held_bytes(self):
        return sum(t.untyped_storage().nbytes() for t in self.tensors if t is not None)

    def stored(self):
        return [t.detach().clone() for t in self.tensors if t is not None]


def _quant_layers(patcher):
    from modelsmith.kernels.qlinear import QuantLinear
    out = {}
    for n, m in patcher.model.diffusion_model.named_modules():
        if isinstance(m, QuantLinear) or type(getattr(m, "weight", None)).__name__ == "QuantizedTensor":
            out[n] = _QLayer(m)
    return out


def _need(backend):
    """The `core` backend exists only where the runtime has quantized-tensor layers (0.29, not 0.3.75)."""
    from modelsmith.compat.quantized import core_quant_ops
    if backend == "core" and core_quant_ops("float8_e4m3fn", "cpu") is None:
        pytest.skip("this runtime (ComfyUI 0.3.75) has no quantized-tensor layers; the pack's own are tested")


# dtype -> (max bytes/param held, min cosine to bf16); mxfp8's exponents pad to 128x4 tiles, large on tiny layers
LIMITS = {"fp8_e4m3fn": (1.02, 0.99), "fp8_e5m2": (1.02, 0.98), "nvfp4": (0.57, 0.95),
          "int8_tensorwise": (1.02, 0.99), "mxfp8": (1.3, 0.99)}


@pytest.mark.parametrize("backend", ["modelsmith", "core"])
@pytest.mark.parametrize("family", ["sdxl", "anima"])
@pytest.mark.parametrize("dtype", list(LIMITS))
def test_quantized_denoiser_bytes_and_cosine(models, family, dtype, backend):
    import precision_models as pm
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    _need(backend)
    base, ref = models[family]
    from modelsmith.nodes.precision import CORE_ONLY, QUANT_DTYPES
    if QUANT_DTYPES[dtype] in CORE_ONLY:
        from modelsmith.compat.quantized import core_quant_ops
        if backend == "modelsmith":  # the pack's own layers run fp8 and nvfp4 only: one sentence
            with pytest.raises(ModelsmithError, match="runs on ComfyUI's own quantized layers"):
                ModelsmithModelComputeDtype().apply(base, dtype, backend="modelsmith")
            return
        if core_quant_ops(QUANT_DTYPES[dtype], "cpu") is None:
            pytest.skip(f"this runtime's core has no {dtype} layers (asked of comfy.quant_ops)")
    before = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    m, report = ModelsmithModelComputeDtype().apply(base, dtype, backend={"core": "comfyui"}.get(backend, backend))["result"]
    layers = _quant_layers(m)
    assert layers, report
    assert ("ComfyUI quantized layers" in report) == (backend == "core")
    # bytes per parameter from the tensors actually held, not from the node's own count
    held = sum(q.held_bytes() for q in layers.values())
    params = sum(q.in_features * q.out_features for q in layers.values())
    bpp = held / params
    out = pm.denoise(m, family)
    cos = pm.cosine(ref, out)
    print(f"\n{family} {dtype} ({backend}): {len(layers)} layers quantized, {bpp:.4f} bytes/param, cosine to bf16 {cos:.5f}")
    max_bpp, min_cos = LIMITS[dtype]
    if backend == "core" and dtype == "nvfp4":
        # core keeps nvfp4 block scales in the swizzled layout, padded to 128x4 tiles: on these tiny
        # layers that padding is large, on 2048-wide ones it is nothing; check the exact byte count
        exact = sum(q.out_features * q.in_features // 2 + -(-q.out_features // 128) * 128 * -(-q.in_features // 64) * 4 + 4
                    for q in layers.values())
        assert held == exact
    else:
        assert bpp <= max_bpp
    assert torch.isfinite(out).all() and cos >= min_cos
    assert f"{len(layers)} linear layers quantized" in report
    # the loader's model is untouched: same classes, same bytes
    assert not _quant_layers(base)
    after = base.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("backend", ["modelsmith", "core"])
def test_presets_keep_sensitive_layers(models, backend):
    import functools
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    _need(backend)
    node = ModelsmithModelComputeDtype()
    node.apply = functools.partial(node.apply, backend={"core": "comfyui"}.get(backend, backend))
    sdxl, _ = models["sdxl"]
    m, _ = node.apply(sdxl, "fp8_e4m3fn")["result"]
    names = set(_quant_layers(m))
    assert not any(n.startswith(("time_embed.", "label_emb.")) for n in names)
    assert any(".attn1.to_q" in n for n in names)
    m2, report = node.apply(sdxl, "fp8_e4m3fn", exclude=r"attn1\.to_q")["result"]
    assert not any(".attn1.to_q" in n for n in _quant_layers(m2)) and "exclude" in report
    anima, _ = models["anima"]
    m3, report = node.apply(anima, "nvfp4")["result"]
    names = set(_quant_layers(m3))
    assert names and not any(n.startswith(("blocks.0.", "final_layer.", "llm_adapter.", "t_embedder.", "x_embedder."))
                             for n in names), names
    assert not any(n.startswith("blocks.1.adaln_modulation") for n in names)
    assert any(n.startswith("blocks.1.self_attn") for n in names) and "preset anima" in report
    m4, _ = node.apply(anima, "nvfp4", preset="none")["result"]
    assert any(n.startswith("blocks.0.") for n in _quant_layers(m4))


@pytest.mark.parametrize("backend", ["modelsmith", "core"])
def test_quantizing_twice_is_refused(models, backend):
    from modelsmith.core.errors import ModelsmithError
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    _need(backend)
    m, _ = ModelsmithModelComputeDtype().apply(models["sdxl"][0], "fp8_e4m3fn", backend={"core": "comfyui"}.get(backend, backend))["result"]
    with pytest.raises(ModelsmithError, match="already quantized"):
        ModelsmithModelComputeDtype().apply(m, "nvfp4")


@pytest.mark.parametrize("dtype", ["fp8_e4m3fn", "nvfp4"])
def test_lora_applies_to_quantized_weights(models, dtype):
    """A LoRA loaded through ComfyUI patches a quantized layer: full load merges it into the stored
    weight (requantized with the layer's scales), low-VRAM load applies it per call, both give the
    same output, and unpatching restores the stored bytes exactly."""
    import comfy.model_management
    import comfy.sd
    from modelsmith.kernels import fp8 as k_fp8
    from modelsmith.kernels import nvfp4 as k_nvfp4
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    base, _ = models["sdxl"]
    q, _ = ModelsmithModelComputeDtype().apply(base, dtype, backend="modelsmith")["result"]
    name, layer = next((n, m.module) for n, m in _quant_layers(q).items() if ".attn2.to_q" in n)
    g = torch.Generator().manual_seed(3)
    down = torch.randn(4, layer.in_features, generator=g) * 0.1
    up = torch.randn(layer.out_features, 4, generator=g) * 0.1
    lora = {f"diffusion_model.{name}.lora_down.weight": down, f"diffusion_model.{name}.lora_up.weight": up}
    patched, _ = comfy.sd.load_lora_for_models(q, None, lora, 1.0, 0)
    raw0, w0 = layer.weight.detach().clone(), layer.dequantize()
    delta = up @ down
    if dtype == "nvfp4":
        expect = k_nvfp4.dequantize_rows(k_nvfp4.encode_with_scales(w0 + delta, layer.weight_scale, layer.weight_scale_2),
                                         layer.weight_scale, layer.weight_scale_2, torch.float32)
    else:
        expect = k_fp8.dequantize(k_fp8.quantize(w0 + delta, scale=layer.weight_scale)[0], layer.weight_scale, torch.float32)
    x = torch.randn(2, 5, layer.in_features, generator=g)

    comfy.model_management.unload_all_models()
    patched.patch_model(device_to=torch.device("cpu"))  # full load: merged into the stored weight
    merged = layer.dequantize()
    assert torch.equal(merged, expect)
    # the LoRA really is in there, up to quantization noise: the change points along the delta
    import precision_models as pm
    moved = pm.cosine(merged - w0, delta)
    print(f"\n{dtype} LoRA: cosine(weight change, LoRA delta) = {moved:.3f}")
    assert moved > {"fp8_e4m3fn": 0.9, "nvfp4": 0.5}[dtype]
    y_full = layer(x)
    patched.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(layer.weight, raw0)  # unpatched: the stored bytes come back exactly

    patched.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)  # low VRAM: patched per call
    assert layer.weight_function and torch.equal(layer.weight, raw0)
    y_low = layer(x)
    patched.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(y_full, y_low)
    assert not layer.weight_function and torch.equal(layer.weight, raw0)


@pytest.mark.parametrize("dtype", ["fp8_e4m3fn", "nvfp4"])
def test_lora_applies_to_core_quantized_weights(models, dtype):
    """On current ComfyUI the node's layers are core's own: a LoRA patches them as it patches a
    core-loaded quantized file (requantized with a recalculated scale), low-VRAM loading applies it
    per call, and unpatching restores the stored bytes exactly."""
    import comfy.model_management
    import comfy.sd
    import precision_models as pm
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    _need("core")
    base, _ = models["sdxl"]
    q, _ = ModelsmithModelComputeDtype().apply(base, dtype, backend="comfyui")["result"]
    name, ql = next((n, m) for n, m in _quant_layers(q).items() if ".attn2.to_q" in n)
    layer = ql.module
    g = torch.Generator().manual_seed(3)
    down = torch.randn(4, ql.in_features, generator=g) * 0.1
    up = torch.randn(ql.out_features, 4, generator=g) * 0.1
    lora = {f"diffusion_model.{name}.lora_down.weight": down, f"diffusion_model.{name}.lora_up.weight": up}
    patched, _ = comfy.sd.load_lora_for_models(q, None, lora, 1.0, 0)
    raw0, w0 = ql.stored(), layer.weight.dequantize().float()
    x = torch.randn(2, 5, ql.in_features, generator=g)
    comfy.model_management.unload_all_models()
    patched.patch_model(device_to=torch.device("cpu"))
    merged = layer.weight.dequantize().float()
    moved = pm.cosine(merged - w0, up @ down)
    print(f"\n{dtype} LoRA on core layers: cosine(weight change, LoRA delta) = {moved:.3f}")
    assert moved > {"fp8_e4m3fn": 0.9, "nvfp4": 0.5}[dtype]
    y_full = layer(x)
    patched.unpatch_model(device_to=torch.device("cpu"))
    assert all(torch.equal(a.view(torch.uint8) if a.dtype.itemsize == 1 else a, b.view(torch.uint8) if b.dtype.itemsize == 1 else b)
               for a, b in zip(_QLayer(layer).stored(), raw0))
    patched.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)
    y_low = layer(x)
    patched.unpatch_model(device_to=torch.device("cpu"))
    rel = float((y_low - y_full).norm() / y_full.norm())
    print(f"{dtype} LoRA on core layers: low-VRAM vs full load, relative difference {rel:.2e}")
    assert rel < {"fp8_e4m3fn": 0.05, "nvfp4": 0.2}[dtype]
    assert pm.cosine((y_low - layer(x)).flatten(), (x @ (up @ down).T).flatten()) > 0.5


def test_fp16_accumulation_says_why_not_on_cpu(models):
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    m, report = ModelsmithModelComputeDtype().apply(models["sdxl"][0], "bf16", fp16_accumulation=True)["result"]
    assert "compute dtype bf16" in report
    assert "needs a CUDA GPU" in report
    assert "model_function_wrapper" not in m.model_options


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_compute_dtypes_on_anima(models, dtype):
    """fp16 on Anima goes through the fp32 residual stream: finite and close to the bf16 output."""
    import precision_models as pm
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    base, ref = models["anima"]
    m, report = ModelsmithModelComputeDtype().apply(base, dtype)["result"]
    assert m.model_options is not base.model_options and m.model is base.model
    out = pm.denoise(m, "anima")
    assert torch.isfinite(out).all()
    print(f"\nanima compute {dtype}: cosine to the loaded model {pm.cosine(ref, out):.6f}")
    assert pm.cosine(ref, out) > 0.999
    if dtype == "fp16":
        assert "residual stream kept in fp32" in report


def _sdxl_graph(ckpt, dtype, steps=2):
    import graphs
    g = graphs.txt2img(ckpt, steps=steps)
    g["8"] = {"class_type": "ModelsmithModelComputeDtype", "inputs": {
        "model": ["1", 0], "dtype": dtype, "preset": "auto", "exclude": "", "fp16_accumulation": False,
        "calibration": ["2", 0]}}
    g["5"]["inputs"]["model"] = ["8", 0]
    return g


@pytest.mark.parametrize("dtype", ["fp8_e4m3fn", "nvfp4", "fp16"])
def test_node_in_a_graph_samples_sdxl(run_graph, tiny_files, output_dir, dtype):
    import numpy as np
    from PIL import Image
    executor, server = run_graph(_sdxl_graph("tiny_sdxl.safetensors", dtype))
    report = executor.history_result["outputs"]["8"]["text"][0]
    assert (dtype in report) or ("compute dtype" in report)
    if dtype != "fp16":  # the calibration prompt: the denoiser's error at three noise levels, small and not zero
        errs = [float(x.split(": ")[1]) for x in report.split("calibration latent: ")[1].split(", ")]
        assert len(errs) == 3 and all(0 < e < (0.2 if dtype == "nvfp4" else 0.05) for e in errs), report
    img = executor.history_result["outputs"]["7"]["images"][0]
    arr = np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"]))
    assert arr.shape == (64, 64, 3) and arr.std() > 0


@pytest.mark.parametrize("dtype", ["fp16", "fp8_e4m3fn", "nvfp4"])
def test_node_in_a_graph_samples_anima(run_graph, comfy, models_dir, output_dir, dtype):
    import numpy as np
    import tiny_anima
    from PIL import Image
    if not (models_dir / "diffusion_models" / "anima-tiny.safetensors").exists():
        tiny_anima.save(models_dir)
    g = {
        "1": {"class_type": "ModelsmithAnimaLoader", "inputs": {
            "diffusion_model": "anima-tiny.safetensors", "text_encoder": "qwen_3_06b_base.safetensors",
            "vae": "qwen_image_vae.safetensors", "dtype": "auto"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, 1girl, smile", "clip": ["1", 1]}},
        "4": {"class_type": "ModelsmithModelComputeDtype", "inputs": {
            "model": ["1", 0], "dtype": dtype, "preset": "auto", "exclude": "", "fp16_accumulation": False,
            "calibration": ["5", 0]}},
        "2": {"class_type": "ModelsmithAnimaSampler", "inputs": {
            "model": ["4", 0], "clip": ["1", 1], "vae": ["1", 2], "positive_text": "masterpiece, 1girl, smile",
            "negative_text": "worst quality", "size": "custom", "width": 64, "height": 64, "steps": 2,
            "cfg": 4.0, "sampler_name": "er_sde", "scheduler": "simple", "seed": 5, "turbo": False}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": f"anima_{dtype}"}},
    }
    executor, _ = run_graph(g)
    img = executor.history_result["outputs"]["3"]["images"][0]
    arr = np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"]))
    assert arr.shape == (64, 64, 3) and arr.std() > 0
    report = executor.history_result["outputs"]["4"]["text"][0]
    if dtype != "fp16":  # the calibration prompt: the denoiser's error at three noise levels
        errs = [float(x.split(": ")[1]) for x in report.split("calibration latent: ")[1].split(", ")]
        assert len(errs) == 3 and all(0 < e < (0.2 if dtype == "nvfp4" else 0.05) for e in errs), report


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_quantized_anima_file_loads_through_the_compat_loader(comfy, tmp_path, fmt):
    """A file written by the quantizer (ComfyUI's native format) loads into QuantLinear layers and
    computes what runtime quantization of the same weights computes."""
    import comfy.utils
    import precision_models as pm
    import safetensors.torch
    import tiny_anima
    from modelsmith.compat.anima import load_anima_model
    from modelsmith.core.quantize import run_quantize
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    sd = tiny_anima.dit_state_dict(blocks=4)
    src, out = tmp_path / "anima.safetensors", tmp_path / f"anima_{fmt}.safetensors"
    safetensors.torch.save_file({k: v.bfloat16() for k, v in sd.items()}, str(src))
    run_quantize(str(src), str(out), fmt=fmt, preset="anima")
    qsd, meta = comfy.utils.load_torch_file(str(out), safe_load=True, return_metadata=True)
    from_file = load_anima_model(qsd, torch.bfloat16, metadata=meta)
    base = load_anima_model(safetensors.torch.load_file(str(src)), torch.bfloat16)
    runtime, _ = ModelsmithModelComputeDtype().apply(base, {"fp8": "fp8_e4m3fn", "nvfp4": "nvfp4"}[fmt],
                                                     backend="modelsmith")["result"]
    a, b = _quant_layers(from_file), _quant_layers(runtime)
    assert set(a) == set(b) and a
    for name in a:
        assert torch.equal(a[name].module.weight.view(torch.uint8), b[name].module.weight.view(torch.uint8)), name
        assert torch.equal(a[name].module.weight_scale.float(), b[name].module.weight_scale.float()), name
    y_file, y_rt = pm.denoise(from_file, "anima"), pm.denoise(runtime, "anima")
    assert torch.isfinite(y_file).all() and torch.allclose(y_file, y_rt, atol=1e-5)
    print(f"\nanima {fmt} file vs bf16: cosine {pm.cosine(pm.denoise(base, 'anima'), y_file):.5f}")


def test_quantized_file_with_an_unknown_format_is_refused(comfy):
    import json
    from modelsmith.compat.quantized import split_quantized
    from modelsmith.core.errors import ModelsmithError
    conf = torch.tensor(list(json.dumps({"format": "int4_awq"}).encode()), dtype=torch.uint8)
    sd = {"net.blocks.1.mlp.layer1.weight": torch.zeros(8, 8, dtype=torch.uint8),
          "net.blocks.1.mlp.layer1.weight_scale": torch.ones(()), "net.blocks.1.mlp.layer1.comfy_quant": conf}
    with pytest.raises(ModelsmithError, match="int4_awq"):
        split_quantized(sd)


def test_anima_loader_node_samples_from_an_nvfp4_file(run_graph, comfy, models_dir, output_dir):
    import numpy as np
    import tiny_anima
    from PIL import Image
    from modelsmith.core.quantize import run_quantize
    if not (models_dir / "diffusion_models" / "anima-tiny.safetensors").exists():
        tiny_anima.save(models_dir)
    dst = models_dir / "diffusion_models" / "anima-tiny-nvfp4.safetensors"
    if not dst.exists():
        run_quantize(str(models_dir / "diffusion_models" / "anima-tiny.safetensors"), str(dst), fmt="nvfp4", preset="none")
    g = {
        "1": {"class_type": "ModelsmithAnimaLoader", "inputs": {
            "diffusion_model": dst.name, "text_encoder": "qwen_3_06b_base.safetensors",
            "vae": "qwen_image_vae.safetensors", "dtype": "auto"}},
        "2": {"class_type": "ModelsmithAnimaSampler", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "positive_text": "masterpiece, 1girl",
            "negative_text": "worst quality", "size": "custom", "width": 64, "height": 64, "steps": 2,
            "cfg": 4.0, "sampler_name": "er_sde", "scheduler": "simple", "seed": 5, "turbo": False}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "anima_nvfp4_file"}},
    }
    executor, _ = run_graph(g)
    img = executor.history_result["outputs"]["3"]["images"][0]
    arr = np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"]))
    assert arr.shape == (64, 64, 3) and arr.std() > 0


def test_fp16_node_on_an_anima_whose_residual_outgrows_fp16(comfy):
    """Model Compute Dtype fp16 on an Anima whose residual stream passes 65504: finite, close to fp32."""
    import precision_models as pm
    import tiny_anima
    from modelsmith.compat.anima import load_anima_model
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    sd = {k: (v * 10000.0 if k.startswith("net.blocks.") and k.endswith("mlp.layer2.weight") else v)
          for k, v in tiny_anima.dit_state_dict(seed=4, blocks=4).items()}
    base = load_anima_model(sd, torch.float32)
    peak = []
    hooks = [b.register_forward_hook(lambda mod, a, o: peak.append(float(o.abs().max())))
             for b in base.model.diffusion_model.blocks]
    ref = pm.denoise(base, "anima")
    for h in hooks:
        h.remove()
    assert max(peak) > 65504  # the residual stream really outgrows fp16
    m16, report = ModelsmithModelComputeDtype().apply(base, "fp16")["result"]
    out = pm.denoise(m16, "anima")
    rel = float((out - ref).norm() / ref.norm())
    print(f"\nanima fp16 (residual peak {max(peak):.3g}): relative error to fp32 {rel:.2e}")
    assert torch.isfinite(out).all() and rel < 1e-2
    assert "residual stream kept in fp32" in report


def test_bad_exclude_pattern_is_named(models):
    from modelsmith.core.errors import ModelsmithError
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    with pytest.raises(ModelsmithError, match=r"exclude: '\(attn': not a valid regular expression"):
        ModelsmithModelComputeDtype().apply(models["sdxl"][0], "fp8_e4m3fn", exclude="norm, (attn")


def _lora_file(comfy, models_dir, base_patcher):
    """A kohya-style LoRA for every attn2.to_q of the tiny SDXL UNet, in models/loras."""
    import safetensors.torch
    path = models_dir / "loras" / "tiny_sdxl_lora.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(11)
        sd = {}
        for name, m in base_patcher.model.diffusion_model.named_modules():
            if name.endswith("attn2.to_q"):
                key = "lora_unet_" + name.replace(".", "_")
                sd[key + ".lora_down.weight"] = torch.randn(4, m.in_features, generator=g) * 0.3
                sd[key + ".lora_up.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.3
                sd[key + ".alpha"] = torch.tensor(4.0)
        safetensors.torch.save_file(sd, str(path))
    return path.name


@pytest.mark.parametrize("order", ["lora_then_fp8", "fp8_then_lora"])
def test_lora_node_with_quantized_model_in_a_graph(run_graph, tiny_files, models_dir, output_dir, models, order):
    """Core LoraLoaderModelOnly and Model Compute Dtype, in either order (the tiny UNet has widths only
    the Modelsmith loader builds, so it loads the checkpoint):
    the LoRA changes the image, strength 0 gives the same image as no LoRA."""
    import graphs
    import numpy as np
    from PIL import Image
    lora = _lora_file(None, models_dir, models["sdxl"][0])

    def image(strength):
        g = graphs.txt2img("tiny_sdxl.safetensors", steps=2)
        g["7"]["inputs"]["filename_prefix"] = f"lora_{order}_{strength}"
        q = {"class_type": "ModelsmithModelComputeDtype", "inputs": {
            "model": None, "dtype": "fp8_e4m3fn", "preset": "auto", "exclude": "", "fp16_accumulation": False}}
        lo = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": None, "lora_name": lora, "strength_model": strength}}
        if order == "lora_then_fp8":
            lo["inputs"]["model"], q["inputs"]["model"], last = ["1", 0], ["9", 0], "8"
        else:
            q["inputs"]["model"], lo["inputs"]["model"], last = ["1", 0], ["8", 0], "9"
        g["8"], g["9"] = q, lo
        g["5"]["inputs"]["model"] = [last, 0]
        executor, _ = run_graph(g)
        img = executor.history_result["outputs"]["7"]["images"][0]
        return np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"])).astype(np.int16)

    off, on = image(0.0), image(1.0)
    g = graphs.txt2img("tiny_sdxl.safetensors", steps=2)
    g["8"] = {"class_type": "ModelsmithModelComputeDtype", "inputs": {
        "model": ["1", 0], "dtype": "fp8_e4m3fn", "preset": "auto", "exclude": "", "fp16_accumulation": False}}
    g["5"]["inputs"]["model"] = ["8", 0]
    g["7"]["inputs"]["filename_prefix"] = f"nolora_{order}"
    executor, _ = run_graph(g)
    img = executor.history_result["outputs"]["7"]["images"][0]
    plain = np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"])).astype(np.int16)
    assert np.abs(on - off).mean() > 1.0      # the LoRA reaches the quantized layers
    assert np.array_equal(off, plain)         # and strength 0 is no LoRA at all


@pytest.mark.runtime  # the node module imports ComfyUI
def test_fp16_accumulation_wrapper_keeps_the_previous_wrapper():
    """The wrapper restores the global flag and still calls a wrapper another node had set."""
    from modelsmith.nodes.precision import _fp16_accumulation_wrapper
    flag = torch.backends.cuda.matmul
    seen = []

    def previous(apply_model, args):
        seen.append(getattr(flag, "allow_fp16_accumulation", None))
        return apply_model(args["input"], args["timestep"], **args["c"]) * 2

    before = getattr(flag, "allow_fp16_accumulation", False)
    out = _fp16_accumulation_wrapper(previous)(lambda x, t, **c: x + t, {"input": torch.ones(2), "timestep": 1.0, "c": {}})
    assert torch.equal(out, torch.full((2,), 4.0)) and seen == [True]
    assert getattr(flag, "allow_fp16_accumulation", False) == before


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_compute_dtypes_match_core_model_compute_dtype_where_core_has_it(models, comfy, dtype):
    """On a ComfyUI with core ModelComputeDtype (0.29) the pack's fp32/fp16/bf16 do exactly what the
    core node does (same denoiser output bit for bit) and the report says so; 0.3.75 has no such node."""
    import nodes
    import precision_models as pm
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    if "ModelComputeDtype" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("ComfyUI 0.3.75 has no core ModelComputeDtype")
    base, _ = models["sdxl"]
    ours, report = ModelsmithModelComputeDtype().apply(base, dtype)["result"]
    core = nodes.NODE_CLASS_MAPPINGS["ModelComputeDtype"]().patch(base, dtype)[0]
    assert torch.equal(pm.denoise(ours, "sdxl"), pm.denoise(core, "sdxl"))
    assert "core Model Compute Dtype" in report


def test_exclude_patterns_run_in_linear_time_and_what_needs_backtracking_is_refused(models):
    import time
    from modelsmith.core.errors import ModelsmithError
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    t = time.perf_counter()
    for bad in (r"(.)\1", r"attn(?=2)", "a" * 201):
        with pytest.raises(ModelsmithError, match="backtracking|too long"):
            ModelsmithModelComputeDtype().apply(models["sdxl"][0], "fp8_e4m3fn", exclude=bad)
    for heavy in (r"(a+)+$", r"(attn|attn2)+\.x", r".*.*.*.*.*.*.*.*.*.*.*.*!"):  # froze re; linear here
        ModelsmithModelComputeDtype().apply(models["sdxl"][0], "fp8_e4m3fn", exclude=heavy)
    assert time.perf_counter() - t < 30
    m, report = ModelsmithModelComputeDtype().apply(models["sdxl"][0], "fp8_e4m3fn", exclude=r"attn2\.to_[kv], blocks\.(0|1)\.")["result"]
    assert "exclude" in report
