"""Every quantized format current ComfyUI (0.33) reads from a file: named per layer by inspection,
loaded by the loaders where the running core reads it (files written with core's own
QuantizedTensor layouts), and one sentence naming the ComfyUI that reads it where the running core
does not. Header-only tests need no ComfyUI; the loader tests run on each runtime."""
import json

import pytest
import torch

from modelsmith.core.inspect import inspect_file
from modelsmith.core.safetensors_io import write_sparse
from modelsmith.kernels.formats import QUANT_FORMATS

# what core 0.33 writes for one 64x256 linear in each format (comfy/ops.py _quantized_weight_state_dict
# over comfy-kitchen's layouts, recorded from the runtime): suffix -> (safetensors dtype, shape)
LAYER_TENSORS = {
    "float8_e4m3fn": {"": ("F8_E4M3", (64, 256)), "_scale": ("F32", ())},
    "float8_e5m2": {"": ("F8_E5M2", (64, 256)), "_scale": ("F32", ())},
    "nvfp4": {"": ("U8", (64, 128)), "_scale": ("F8_E4M3", (128, 16)), "_scale_2": ("F32", ())},
    "mxfp8": {"": ("F8_E4M3", (64, 256)), "_scale": ("U8", (128, 8))},
    "int8_tensorwise": {"": ("I8", (64, 256)), "_scale": ("F32", ())},
    "convrot_w4a4": {"": ("I8", (64, 128)), "_scale": ("F32", (64,))},
    "asym_w4a8_int8": {"": ("I8", (64, 128)), "_s_rel": ("F8_E4M3", (64, 16)), "_s_channel": ("F32", (64,)),
                       "_codebook": ("F32", (16,))},
}
QUANT_CONF = {"convrot_w4a4": {"convrot_groupsize": 256}, "asym_w4a8_int8": {"group_size": 16, "convrot_groupsize": 256}}


def test_every_format_of_current_comfyui_is_known():
    assert set(LAYER_TENSORS) == set(QUANT_FORMATS)


def _conf_bytes(fmt):
    return json.dumps({"format": fmt, **QUANT_CONF.get(fmt, {})}).encode()


def _header_only_dit(path, fmt, layers=3, extra=None):
    """A diffusion model (FLUX.1-shaped names) whose first `layers` MLP layers are in `fmt`."""
    t = {"img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
         "single_blocks.0.linear1.weight": ("BF16", (21504, 3072)), "final_layer.linear.weight": ("BF16", (64, 3072)),
         "guidance_in.in_layer.weight": ("BF16", (3072, 256)),
         "double_blocks.0.img_attn.norm.key_norm.scale": ("BF16", (128,))}
    confs = {}
    for i in range(layers):
        layer = f"double_blocks.{i}.img_mlp.0"
        for suffix, spec in LAYER_TENSORS[fmt].items():
            t[f"{layer}.weight{suffix}"] = spec
        t[f"{layer}.comfy_quant"] = ("U8", (len(_conf_bytes(fmt)),))
        confs[f"{layer}.comfy_quant"] = _conf_bytes(fmt)
    t.update(extra or {})
    write_sparse(path, t)
    # the comfy_quant bytes are the only values inspection reads: write them in place
    from modelsmith.core.safetensors_io import read_header
    h = read_header(path)
    with open(path, "r+b") as f:
        for name, data in confs.items():
            f.seek(h.data_start + h.tensors[name].begin)
            f.write(data)
    return path


@pytest.mark.parametrize("fmt", sorted(QUANT_FORMATS))
def test_inspect_names_the_format_per_layer_and_counts_logical_parameters(tmp_path, fmt):
    rep = inspect_file(_header_only_dit(tmp_path / f"{fmt}.safetensors", fmt))
    assert rep["quantization"] == {fmt: 3} and rep["quantized_layers"] == 3
    assert rep["family"] == "flux1"
    expect_precision = {"fp8": "fp8-scaled", "fp4": "mixed"}.get(QUANT_FORMATS[fmt].kind, "mixed")
    assert rep["precision"] == ("nvfp4" if fmt == "nvfp4" else expect_precision)
    # every quantized layer counts its logical 64x256 weight, scales are not parameters
    plain = 3072 * 64 + 9216 * 3072 + 21504 * 3072 + 64 * 3072 + 3072 * 256 + 128
    assert rep["params"] == plain + 3 * 64 * 256
    assert not [w for w in rep["warnings"] if "format" in w]
    from modelsmith.core.report import format_report
    # beside the quantized layers, the denoiser's matrices kept in high precision (the file's other 2-D weights)
    assert rep["unquantized_layers"] == {"bf16": 5}
    assert f"quantized      {fmt} 3, bf16 5 layers" in format_report(rep)


def test_inspect_counts_mixed_formats_and_names_an_unknown_one(tmp_path):
    extra = {}
    for suffix, spec in LAYER_TENSORS["nvfp4"].items():
        extra["double_blocks.9.img_mlp.0.weight" + suffix] = spec
    path = _header_only_dit(tmp_path / "mixed.safetensors", "int8_tensorwise", layers=2, extra=extra)
    rep = inspect_file(path)
    assert rep["quantization"] == {"int8_tensorwise": 2} and rep["precision"] == "mixed"
    t = {"img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_mlp.0.weight": ("I8", (64, 256)),
         "double_blocks.0.img_attn.norm.key_norm.scale": ("BF16", (128,)),
         "double_blocks.0.img_mlp.0.comfy_quant": ("U8", (len(b'{"format": "int2_magic"}'),))}
    p2 = tmp_path / "unknown.safetensors"
    write_sparse(p2, t)
    from modelsmith.core.safetensors_io import read_header
    h = read_header(p2)
    with open(p2, "r+b") as f:
        f.seek(h.data_start + h.tensors["double_blocks.0.img_mlp.0.comfy_quant"].begin)
        f.write(b'{"format": "int2_magic"}')
    rep = inspect_file(p2)
    assert rep["quantization"] == {"int2_magic": 1}
    assert any("int2_magic" in w and "neither Modelsmith nor any ComfyUI" in w for w in rep["warnings"])


# ----------------------------------------------------------------------------------------------
# in the runtime: files written with core's own layouts load through the pack's loaders

def _core_quantized_anima(models_dir, fmt, name, use_core):
    """A tiny native-shaped Anima whose MLP output layers (256 in, 64 out) are in `fmt`, written the way
    core writes a quantized layer (QuantizedTensor.state_dict + comfy_quant), or, where the running core
    has no such layout, with the same names, dtypes and shapes holding random bytes."""
    import safetensors.torch
    import tiny_anima
    sd = tiny_anima.dit_state_dict(seed=5, blocks=2, adapter=tiny_anima.NATIVE_ADAPTER, dtype=torch.bfloat16)
    sd = {("net." + k if not k.startswith("net.") else k): v for k, v in sd.items()}
    reference = {}
    for i in range(2):
        layer = f"net.blocks.{i}.mlp.layer2"
        w = sd.pop(layer + ".weight")
        assert tuple(w.shape) == (64, 256)
        if use_core:
            from comfy.quant_ops import QUANT_ALGOS, QuantizedTensor
            qt = QuantizedTensor.from_float(w, QUANT_ALGOS[fmt]["comfy_tensor_layout"])
            reference[layer] = qt
            for k, v in qt.state_dict(layer + ".weight").items():
                sd[k] = v.view(torch.uint8) if v.dtype == getattr(torch, "float8_e8m0fnu", None) else v
        else:
            g = torch.Generator().manual_seed(i)
            for suffix, (dt, shape) in LAYER_TENSORS[fmt].items():
                sd[layer + ".weight" + suffix] = torch.randint(-8, 8, shape, generator=g).to(
                    {"I8": torch.int8, "U8": torch.uint8, "F32": torch.float32, "F8_E4M3": torch.float8_e4m3fn,
                     "F8_E5M2": torch.float8_e5m2}[dt])
        sd[layer + ".comfy_quant"] = torch.tensor(list(_conf_bytes(fmt)), dtype=torch.uint8)
    path = models_dir / "diffusion_models" / name
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, reference


@pytest.mark.parametrize("fmt", sorted(QUANT_FORMATS))
def test_loader_loads_what_core_reads_and_names_what_it_cannot(comfy, anima_files, models_dir, fmt):
    import nodes
    import folder_paths
    from modelsmith.compat.anima import native_anima_available
    from modelsmith.compat.quantized import FILE_FORMATS, core_reads
    name = f"anima-q-{fmt}.safetensors"
    use_core = core_reads(fmt) and native_anima_available()  # core's native Anima with core's layouts
    if not use_core and fmt in FILE_FORMATS:
        pytest.skip(f"{fmt} on a runtime without native Anima and core's layouts for it is loaded by the pack's "
                    f"own layers (tests/test_precision.py)")
    path, reference = _core_quantized_anima(models_dir, fmt, name, use_core)
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    rep = inspect_file(path)
    assert rep["quantization"] == {fmt: 2}
    loader = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]()
    import safetensors.torch
    import tiny_anima
    te_path = models_dir / "text_encoders" / "qwen3_1024_tiny_q.safetensors"
    if not te_path.exists():  # the 1024-wide encoder a native-shaped adapter reads
        safetensors.torch.save_file(tiny_anima.te_state_dict(seed=5, hidden=1024, dtype=torch.bfloat16), str(te_path))
        folder_paths.filename_list_cache.pop("text_encoders", None)
    te, vae = te_path.name, anima_files["vae"].name
    try:
        if use_core:
            model, clip, _, settings = loader.load(name, te, vae, dtype="bf16")
            assert "native Anima" in settings["report"]
            dit = model.model.diffusion_model
            for layer, ref in reference.items():
                got = dit.get_submodule(layer[len("net."):]).weight
                assert type(got).__name__ == "QuantizedTensor"  # core's own layer holds the file's bits
                assert torch.equal(got._qdata.view(torch.uint8), ref._qdata.view(torch.uint8))
                # dequantized in the model's compute dtype: equal to the writer's within bf16 rounding
                a, b = got.dequantize().float(), ref.dequantize().float()
                assert float((a - b).norm() / b.norm()) < 1e-2
            pos = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, "1girl")[0]
            latent = nodes.NODE_CLASS_MAPPINGS["EmptyLatentImage"]().generate(16, 16, 1)[0]
            out = nodes.NODE_CLASS_MAPPINGS["KSampler"]().sample(model, 1, 1, 1.0, "euler", "simple", pos, pos,
                                                                 latent, 1.0)[0]["samples"]
            assert torch.isfinite(out).all()
            # Model Compute Dtype on a model that is already quantized: compute dtypes apply, quantizing
            # again is one sentence, never a traceback
            dtype_node = nodes.NODE_CLASS_MAPPINGS["ModelsmithModelComputeDtype"]()
            assert "compute dtype fp16" in dtype_node.apply(model, dtype="fp16")["ui"]["text"][0]
            with pytest.raises(Exception, match="already quantized") as e:  # the pack's error, as ComfyUI loaded it
                dtype_node.apply(model, dtype="fp8_e4m3fn")
            assert type(e.value).__name__ == "ModelsmithError"
        else:
            with pytest.raises(Exception) as e:
                loader.load(name, te, vae, dtype="bf16")
            assert type(e.value).__name__ == "ModelsmithError"
            msg = str(e.value)
            assert f"{fmt}, which the running ComfyUI cannot read" in msg
            assert f"needs ComfyUI >= {QUANT_FORMATS[fmt].comfyui}" in msg and "Traceback" not in msg
    finally:
        path.unlink()
        folder_paths.filename_list_cache.pop("diffusion_models", None)


def test_doctor_cli_shows_the_formats_per_layer_count(tmp_path):
    import os
    import subprocess
    import sys
    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    _header_only_dit(models / "diffusion_models" / "flux-int8.safetensors", "int8_tensorwise", layers=2)
    r = subprocess.run([sys.executable, "-m", "modelsmith", "doctor", str(models)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "flux1 dev diffusion-model mixed (int8_tensorwise 2, bf16 5) flow" in r.stdout


# ----------------------------------------------------------------------------------------------
# the pack's writer: core's layouts, and the proof after writing

def test_the_writer_uses_core_layouts_for_every_format_it_writes():
    from modelsmith.core.quantize import FORMATS, file_entries
    for fmt in FORMATS.values():
        want = {".weight" + s: spec for s, spec in LAYER_TENSORS[fmt].items()}
        assert file_entries(fmt, (64, 256)) == want, fmt


def _small_model(path):
    import safetensors.torch
    g = torch.Generator().manual_seed(0)
    sd = {f"blocks.{i}.mlp.layer{j}.weight": (torch.randn(64, 256, generator=g) * 0.05).to(torch.bfloat16)
          for i in range(3) for j in (1, 2)}
    sd["blocks.0.mlp.layer1.bias"] = torch.zeros(64, dtype=torch.bfloat16)
    sd["x_embedder.proj.1.weight"] = torch.randn(64, 68, generator=g).to(torch.bfloat16)  # no 16/32 blocks
    safetensors.torch.save_file(sd, str(path))
    return sd


@pytest.mark.parametrize("fmt", ["fp8", "fp8_e5m2", "int8", "mxfp8", "nvfp4"])
def test_every_written_layer_is_checked_against_the_plan(tmp_path, fmt):
    """run_quantize re-reads what it wrote (formats, dtypes, shapes, scales) and reports the count; a
    planted mismatch (a layer relabelled, a layer the plan keeps but the file quantizes) is caught."""
    import safetensors.torch
    from modelsmith.core.quantize import FORMATS, plan, verify
    src, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    _small_model(src)
    st = run_quantize_ok(src, out, fmt)
    assert st["verified_layers"] == st["quantized_layers"] == (6 if fmt in ("mxfp8", "nvfp4") else 7)
    assert inspect_file(out)["quantization"] == {FORMATS[fmt]: st["quantized_layers"]}
    table = {k: (v.dtype, v.shape) for k, v in _header(src).items()}
    layers = plan(table, fmt, [])
    assert verify(str(out), layers, table) == []
    # planted: one layer's comfy_quant says another format; the plan keeps another layer high
    tampered = safetensors.torch.load_file(str(out))
    other = "float8_e4m3fn" if FORMATS[fmt] != "float8_e4m3fn" else "float8_e5m2"
    tampered["blocks.1.mlp.layer2.comfy_quant"] = torch.tensor(list(json.dumps({"format": other}).encode()),
                                                               dtype=torch.uint8)
    safetensors.torch.save_file(tampered, str(out))
    smaller = {k: v for k, v in layers.items() if k != "blocks.2.mlp.layer1"}
    problems = verify(str(out), smaller, table)
    assert f"blocks.1.mlp.layer2.comfy_quant says {other}, planned {FORMATS[fmt]}" in problems
    assert "blocks.2.mlp.layer1 is quantized, planned in high precision" in problems


def run_quantize_ok(src, out, fmt):
    from modelsmith.core.quantize import run_quantize
    return run_quantize(str(src), str(out), fmt=fmt, preset="none")


def _header(path):
    from modelsmith.core.safetensors_io import read_header
    return read_header(str(path)).tensors


# ----------------------------------------------------------------------------------------------
# mixed formats chosen by measured error, and the quality report

def _generated_layers(path, n=6):
    """Layers of realistic shapes (scaled down): Gaussian weights, every third with outlier columns,
    as attention and MLP weights have, so formats differ in error from layer to layer."""
    import safetensors.torch
    g = torch.Generator().manual_seed(1)
    sd = {}
    for i in range(n):
        for j, shape in enumerate(((2048, 512), (512, 2048), (512, 512))):
            w = torch.randn(*shape, generator=g) * 0.02
            if (i + j) % 3 == 0:
                w[:, :4] *= 40
            sd[f"blocks.{i}.mlp.layer{j + 1}.weight" if j < 2 else f"blocks.{i}.self_attn.q_proj.weight"] = w.bfloat16()
    sd["blocks.0.adaln_modulation.1.weight"] = (torch.randn(512, 512, generator=g) * 0.02).bfloat16()
    safetensors.torch.save_file(sd, str(path))


def _quality(path):
    from modelsmith.core.safetensors_io import read_header
    return json.loads(read_header(str(path)).metadata["modelsmith.quantization"])


def test_the_planner_meets_its_budgets_and_beats_uniform_and_random(tmp_path):
    import os
    import random
    from modelsmith.core import qplan
    from modelsmith.core.quantize import run_quantize
    src = tmp_path / "src.safetensors"
    _generated_layers(src)
    uni = {}
    for f in ("nvfp4", "fp8"):
        run_quantize(str(src), str(tmp_path / f"{f}.safetensors"), fmt=f, preset="none")
        uni[f] = (os.path.getsize(tmp_path / f"{f}.safetensors"), _quality(tmp_path / f"{f}.safetensors"))
    budget = uni["nvfp4"][0] * 1.25
    st = run_quantize(str(src), str(tmp_path / "mixed.safetensors"), preset="none", max_bytes=budget)
    size, q = os.path.getsize(tmp_path / "mixed.safetensors"), st["quality"]
    assert size <= budget and q == _quality(tmp_path / "mixed.safetensors") and len(q["formats"]) >= 2
    assert q["mean_error"] <= 0.75 * uni["nvfp4"][1]["mean_error"], (q["mean_error"], uni["nvfp4"][1]["mean_error"])
    # the same bytes spent on layers picked at random (from every layer in nvfp4, upgrades to fp8 in a random order)
    per = {l: e for l, (f, e) in uni["nvfp4"][1]["layers"].items()}
    fp8_err = {l: e for l, (f, e) in uni["fp8"][1]["layers"].items()}
    from modelsmith.core.safetensors_io import read_header
    table = read_header(str(src)).tensors
    cost = {l: qplan.layer_bytes("float8_e4m3fn", table[l + ".weight"].shape, "U8")
            - qplan.layer_bytes("nvfp4", table[l + ".weight"].shape, "U8") for l in per}
    rnd, spent, room = dict(per), 0, budget - uni["nvfp4"][0]
    order = sorted(per)
    random.Random(0).shuffle(order)
    for l in order:
        if spent + cost[l] <= room:
            spent += cost[l]
            rnd[l] = fp8_err[l]
    assert q["mean_error"] < sum(rnd.values()) / len(rnd)
    # an error budget: every quantized layer within it, the others kept in high precision
    st = run_quantize(str(src), str(tmp_path / "err.safetensors"), preset="none", max_error=0.05,
                      candidates=("nvfp4", "int8", "fp8"))
    errs = [e for _, e in st["quality"]["layers"].values()]
    assert errs and max(errs) <= 0.05 and st["quality"]["worst_error"] <= 0.05
    # outlier-free layers: int8 (as small as fp8, listed first) is within 0.05 where nvfp4 is not
    assert "int8_tensorwise" in st["quality"]["formats"]


def test_the_family_keeps_its_layers_high_in_a_mixed_plan(tmp_path):
    from modelsmith.core.quantize import run_quantize
    src = tmp_path / "src.safetensors"
    _generated_layers(src, n=2)
    st = run_quantize(str(src), str(tmp_path / "m.safetensors"), preset="cosmos-predict2", max_error=1.0)
    layers = st["quality"]["layers"]
    assert "blocks.0.mlp.layer1" not in layers and "blocks.0.adaln_modulation.1" not in layers  # blocks.0 stays high
    assert "blocks.1.mlp.layer1" in layers and set(st["quality"]["formats"]) == {"nvfp4"}  # within 1.0: the smallest


def test_the_report_is_in_the_cli_json_and_in_inspect(tmp_path):
    import subprocess
    import sys
    src = tmp_path / "src.safetensors"
    _generated_layers(src, n=2)
    out = tmp_path / "q.safetensors"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "quantize", str(src), str(out), "--preset", "none",
                        "--max-error", "0.04", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["quality"] == _quality(out) and rep["verified_layers"] == rep["quantized_layers"]
    assert set(rep["quality"]) >= {"formats", "size_before", "size_after", "mean_error", "worst_error", "layers"}
    info = inspect_file(out)
    assert info["quantization_quality"]["worst_error"] == rep["quality"]["worst_error"]
    assert info["quantization"] == rep["quality"]["formats"]


def test_the_writers_fp8_rounds_once():
    """The file writer's fp8 takes x * (1/scale) in float32 and rounds once, to fp8; kitchen's eager
    rounds the bf16 product first. Same scale, same format, never a larger error."""
    from modelsmith.kernels import fp8
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(512, 1024, generator=g) * 0.02).bfloat16()
    err = {}
    for precise in (False, True):
        q, s = fp8.quantize(w, precise=precise)
        err[precise] = float((fp8.dequantize(q, s, torch.float32) - w.float()).norm() / w.float().norm())
    assert err[True] < err[False], err
