"""Every DiT family of the registry, on a tiny model built with the running ComfyUI's own classes:
quantize keeps exactly the layers its record names (in the file and at run time alike) and the file
loads in core and samples; block-weight merging equals core's own in-memory block merge."""
from __future__ import annotations

import re

import pytest
import safetensors.torch
import torch

import family_models as fm

FAMILIES = sorted(fm.SPECS)


def _save(tmp_path, family, seed=0, name=None):
    path = tmp_path / f"{name or family}.safetensors"
    safetensors.torch.save_file(fm.state_dict(family, seed), str(path))
    return path


def _expected_quantized(sd, family):
    """Every linear weight of the model that the record does not keep in high precision."""
    from modelsmith.core import registry
    from modelsmith.core.quantize import NOT_LINEAR
    prefix = fm.PREFIX.get(family, "")
    keep = [re.compile(p) for p in registry.get(family).keep_high]
    out = set()
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and not NOT_LINEAR.search(k):
            layer = k[: -len(".weight")]
            if not any(p.search(layer[len(prefix):]) for p in keep):
                out.add(layer[len(prefix):])
    return out


def _quantized_modules(dit):
    from modelsmith.compat.quantized import _is_quantized
    return {n for n, m in dit.named_modules() if n and _is_quantized(m)}


@pytest.mark.parametrize("family", FAMILIES)
def test_quantize_keeps_exactly_the_records_layers_and_core_samples_the_file(comfy, tmp_path, family):
    from modelsmith.core import registry
    from modelsmith.core.quantize import run_quantize
    from safetensors import safe_open
    src = _save(tmp_path, family)
    sd = safetensors.torch.load_file(str(src))
    rec = registry.get(family)
    names = [k[len(fm.PREFIX.get(family, "")):] for k in sd]
    for p in rec.keep_high:  # no dead pattern: each names a layer the family has
        assert any(re.search(p, n) for n in names), f"{family}: keep pattern {p} matches nothing"
    out = tmp_path / f"{family}-fp8.safetensors"
    stats = run_quantize(str(src), str(out), fmt="fp8", preset="auto")
    assert stats["preset"] == family
    with safe_open(str(out), "pt") as f:
        written = {k[: -len(".comfy_quant")][len(fm.PREFIX.get(family, "")):] for k in f.keys() if k.endswith(".comfy_quant")}
    expected = _expected_quantized(sd, family)
    assert written == expected and expected, (sorted(written ^ expected))
    patcher = fm.core_load(out, family)
    in_core = _quantized_modules(patcher.model.diffusion_model)
    fp8 = {n for n, m in patcher.model.diffusion_model.named_modules()
           if getattr(getattr(m, "weight", None), "dtype", None) == torch.float8_e4m3fn}
    assert (in_core or fp8) == expected, "core did not build the file's quantized layers as written"
    latent = fm.sample(patcher, family)
    assert torch.isfinite(latent).all() and latent.abs().max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_quantize_keeps_the_same_layers_as_the_file(comfy, tmp_path, family):
    """Model Compute Dtype's fp8 on the loaded model maps it to the same record, the same layers."""
    from modelsmith.compat.family import family_of
    from modelsmith.compat.quantized import quantized_patcher
    src = _save(tmp_path, family)
    patcher = fm.core_load(src, family)
    assert family_of(patcher)[0] == family
    q, stats = quantized_patcher(patcher, "float8_e4m3fn", preset="auto", backend="modelsmith")
    got = _quantized_modules(q.model.diffusion_model)
    assert got == _expected_quantized(safetensors.torch.load_file(str(src)), family), sorted(got)


def _core_merge(comfy, family, a, b, weights):
    """Core's in-memory block merge of A and B: its model-specific node for the family where it has
    one, else ModelMergeBlocks with the record's names; core's ratio keeps model1, so ratio = 1 - w."""
    from comfy_extras import nodes_model_merging as mm
    from comfy_extras import nodes_model_merging_model_specific as ms

    from modelsmith.core import registry
    rec = registry.get(family)
    node_cls = getattr(ms, rec.core_merge_node, None) if rec.core_merge_node else None
    if node_cls is not None:
        args = [k for k in node_cls.INPUT_TYPES()["required"] if k not in ("model1", "model2")]
        kw = {arg: 1.0 - weights.get(arg.rstrip("."), weights["BASE"]) for arg in args}
        first = args[0].rstrip(".")
        assert weights.get(first, weights["BASE"]) == weights["BASE"], "core gives unnamed keys its first ratio"
        node = node_cls()
    else:
        kw = {"\x00unmatched": 1.0 - weights["BASE"]}  # core's default ratio: its first argument's
        kw.update({n + ".": 1.0 - w for n, w in weights.items() if n != "BASE"})
        node = mm.ModelMergeBlocks()
    (merged,) = node.merge(a, b, **kw)
    merged.patch_model(device_to=torch.device("cpu"))
    out = {k: v.detach().clone() for k, v in merged.model.diffusion_model.state_dict().items()}
    merged.unpatch_model(device_to=torch.device("cpu"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_block_merge_equals_cores_block_merge(comfy, tmp_path, family):
    from modelsmith.core import blocks as blk
    from modelsmith.core.merge import Recipe, run_merge
    a_path, b_path = _save(tmp_path, family, 0, "a"), _save(tmp_path, family, 1, "b")
    keys = list(safetensors.torch.load_file(str(a_path)))
    names = blk.block_names(family, keys)
    assert len(names) > 4 and any(n.endswith(".1") for n in names), names  # blocks counted from the file
    weights = {n: round(((i * 5) % 11) / 10, 2) for i, n in enumerate(names)}
    weights[names[1]] = weights["BASE"]  # core gives keys in no named block its first argument's ratio
    out = tmp_path / "merged.safetensors"
    run_merge(Recipe(method="weighted_sum", inputs=[str(a_path), str(b_path)], alpha=0.5, blocks=weights), str(out))
    ours = safetensors.torch.load_file(str(out))
    core = _core_merge(comfy, family, fm.core_load(a_path, family), fm.core_load(b_path, family), weights)
    prefix = fm.PREFIX.get(family, "")
    assert set(core) == {k[len(prefix):] for k in ours}
    for k, v in ours.items():
        assert torch.allclose(v, core[k[len(prefix):]], rtol=1e-5, atol=1e-6), k
    a_sd = safetensors.torch.load_file(str(a_path))
    moved = sum(not torch.equal(ours[k], a_sd[k]) for k in ours)
    assert moved > len(ours) // 2  # the merge did mix B in


# ----------------------------------------------------------------------------------------------
# The disagreements the registry ended, each with the test that would have caught it

def test_vpred_sdxl_cfg_is_one_number_in_inspection_settings_and_the_sampler(comfy, tmp_path):
    import json
    from pathlib import Path

    from modelsmith.core.inspect import inspect_file
    from modelsmith.core.safetensors_io import write_sparse
    from modelsmith.nodes.common import settings_from_report
    from modelsmith.nodes.sampling import default_cfg
    table = json.loads((Path(__file__).parent / "data" / "key_tables.json").read_text())["models"]["sdxl_vpred_ztsnr"]
    path = tmp_path / "vpred.safetensors"
    write_sparse(path, {k: tuple(v) for k, v in table["tensors"].items()})
    rep = inspect_file(path)
    settings = settings_from_report(rep, "v", True)
    assert rep["recommended"]["cfg"] == settings["recommended"]["cfg"] == default_cfg("v") == default_cfg("v+ztsnr") == 4.5
    eps = inspect_file(path)
    eps_settings = settings_from_report(eps, "eps", False)  # an override to eps takes eps's settings
    assert eps_settings["recommended"]["cfg"] == default_cfg("eps") == 6.0


@pytest.mark.parametrize("family", ["sd2", "sdxl-refiner"])
def test_a_loaded_unet_is_one_family_for_quantize_and_the_lora_check(comfy, family):
    """SD2 was "sd1" to quantization and "sd2" to the LoRA check; a refiner "sdxl" and "sdxl-refiner"."""
    import tiny_dit

    from modelsmith.compat import sized
    from modelsmith.compat.family import family_of
    from modelsmith.compat.quantized import quantized_patcher
    from modelsmith.nodes import lora as lora_node
    name = {"sd2": "sd2_unet", "sdxl-refiner": "sdxl_refiner_unet"}[family]
    sd = tiny_dit.TINY_DIT[name][0]()
    import comfy.model_detection
    patcher, _ = sized.build_model(family, comfy.model_detection.detect_unet_config(sd, "model.diffusion_model."), sd,
                                   dtype=torch.float32)
    assert lora_node.model_family is family_of  # one mapping, not two
    assert family_of(patcher)[0] == family
    _, stats = quantized_patcher(patcher, "float8_e4m3fn", backend="modelsmith")
    assert (stats["family"], stats["preset"]) == (family, family)


def test_native_anima_adapter_is_the_registry_record(comfy):
    """Core's fixed Anima adapter, read from core's own class, in the registry's own key names."""
    from modelsmith.compat.core_probe import core_anima_adapter
    from modelsmith.core import registry
    core = core_anima_adapter()
    if core is None:
        pytest.skip("this ComfyUI has no native Anima (0.3.x): nothing to compare")
    rec = registry.get("anima").core_native["adapter"]
    assert {k: core[k] for k in rec} == rec


def test_latent_channels_are_what_cores_config_classes_say(comfy):
    """Each record's latent channels and config class agree with the running core's latent format."""
    import comfy.supported_models

    from modelsmith.core import registry
    for f in registry.FAMILIES:
        cls = getattr(comfy.supported_models, f.config_classes[0], None)
        if cls is None:  # Anima on 0.3.x: the pack's own config (compat/anima.py)
            from modelsmith.compat.anima import AnimaConfig
            cls = AnimaConfig
        assert cls.latent_format.latent_channels == f.latent_channels, f.id
