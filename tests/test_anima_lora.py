"""Anima LoRAs in every common key style and algorithm: applied by core LoraLoaderModelOnly and by
Modelsmith's checked loader to the compat Anima (and, on 0.29, to native Anima with identical
results), checked against the formulas; mismatched depth/family named; inspect reads them."""
import pytest
import safetensors.torch
import torch

import tiny_lora

STYLES = [("kohya", "lora"), ("diffusion_model", "lora"), ("net", "lora"), ("kohya", "lokr"), ("lycoris", "lokr"),
          ("kohya", "loha")]


def _modules(adapter_dim):
    return {"blocks.0.self_attn.q_proj": (64, 64), "blocks.2.mlp.layer1": (256, 64),
            "llm_adapter.blocks.0.self_attn.q_proj": (adapter_dim, adapter_dim)}


def _patched(model, module):
    """The weight of `module` with the model's patches applied by ComfyUI's own LoRA math."""
    import comfy.lora
    key = f"diffusion_model.{module}.weight"
    w = model.model.diffusion_model.get_submodule(module).weight.detach().float().clone()
    if key not in model.patches:
        return w
    calc = getattr(comfy.lora, "calculate_weight", None) or model.calculate_weight
    return calc(model.patches[key], w, key).float()


@pytest.fixture(scope="module")
def compat_model(comfy):
    import tiny_anima
    from modelsmith.compat.anima import load_anima_model
    return load_anima_model(tiny_anima.dit_state_dict(seed=21, blocks=3), torch.float32)


def _save(models_dir, name, sd):
    path = models_dir / "loras" / name
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _apply(which, model, name, strength):
    import nodes
    if which == "core":
        return nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(model, name, strength)[0]
    out = nodes.NODE_CLASS_MAPPINGS["ModelsmithLoraLoader"]().load(model, name, strength)
    return out["result"][0]


@pytest.mark.parametrize("style, algo", STYLES)
def test_lora_styles_apply_to_compat_anima_as_the_formulas_say(comfy, models_dir, compat_model, style, algo):
    """Core LoraLoaderModelOnly applies kohya and diffusion_model names (LoRA, LoKr, LoHa) to the compat
    Anima; `net.` and `lycoris_` names it leaves alone for Anima (upstream maps neither, on 0.29 too),
    so Modelsmith's loader renames them. Modelsmith's loader applies every style. Tolerance 1e-5 relative to the formula."""
    mods = _modules(32)
    sd = tiny_lora.make(style, algo, mods, seed=3)
    name = f"anima_{style}_{algo}.safetensors"
    _save(models_dir, name, sd)
    for which in ("core", "modelsmith"):
        patched = _apply(which, compat_model, name, 0.8)
        for module in mods:
            base = compat_model.model.diffusion_model.get_submodule(module).weight.detach().float()
            got = _patched(patched, module) - base
            if which == "core" and style in ("net", "lycoris"):
                assert got.abs().max() == 0, "core maps no net./lycoris_ names for Anima (upstream behaviour)"
                continue
            want = tiny_lora.expected_delta(sd, style, algo, module, 0.8)
            assert float((got - want).norm() / want.norm()) < 1e-5, (which, module)


def test_lora_on_native_anima_0_29_equals_compat(comfy, models_dir):
    """Native Anima (0.29) and the compat Anima built from the same file get identical weights from
    the same LoRA, for every style, through core's loader and Modelsmith's."""
    from modelsmith.compat.anima import load_anima_model, load_native_anima, native_anima_available
    if not native_anima_available():
        pytest.skip("native Anima only on current ComfyUI (0.29); 0.3.75 checks the compat Anima against the formulas")
    import tiny_anima
    sd = tiny_anima.dit_state_dict(seed=22, blocks=3, adapter=tiny_anima.NATIVE_ADAPTER)
    native, compat = load_native_anima(dict(sd), torch.float32), load_anima_model(dict(sd), torch.float32)
    mods = _modules(1024)
    for style, algo in STYLES:
        name = f"native_{style}_{algo}.safetensors"
        _save(models_dir, name, tiny_lora.make(style, algo, mods, seed=4))
        for which in ("core", "modelsmith"):
            a, b = _apply(which, native, name, 1.0), _apply(which, compat, name, 1.0)
            for module in mods:
                wa, wb = _patched(a, module), _patched(b, module)
                assert torch.allclose(wa, wb, rtol=0, atol=1e-6), (style, algo, which, module)
        (models_dir / "loras" / name).unlink()


def _block_lora(blocks, width=64):
    return tiny_lora.make("kohya", "lora", {f"blocks.{i}.self_attn.q_proj": (width, width) for i in range(blocks)}, seed=5)


def test_lora_of_another_depth_or_family_is_named(comfy, models_dir, compat_model):
    import tiny_anima
    import nodes
    from modelsmith.compat.anima import load_anima_model
    loader = nodes.NODE_CLASS_MAPPINGS["ModelsmithLoraLoader"]()
    _save(models_dir, "anima_40_blocks.safetensors", _block_lora(40))
    text = loader.load(compat_model, "anima_40_blocks.safetensors", 1.0)["result"][1]
    assert "Anima 2.9b (40 blocks)" in text and "touches blocks up to 39" in text and "has 3 blocks" in text
    assert "37 of 40 LoRA layers match no layer" in text
    deep = load_anima_model(tiny_anima.dit_state_dict(seed=23, blocks=40), torch.float32)
    _save(models_dir, "anima_28_blocks.safetensors", _block_lora(28))
    text = loader.load(deep, "anima_28_blocks.safetensors", 1.0)["result"][1]
    assert "made for Anima 2b (28 blocks) but the model has 40 blocks" in text and "blocks 28..39 stay untouched" in text
    same = loader.load(deep, "anima_40_blocks.safetensors", 1.0)["result"][1]
    assert "warning" not in same and "applied to 40 layers" in same
    sdxl = tiny_lora.make("kohya", "lora", {"input_blocks.4.1.transformer_blocks.0.attn1.to_q": (64, 64)}, seed=6)
    _save(models_dir, "sdxl_style.safetensors", sdxl)
    with pytest.raises(Exception, match=r"for sd1/sdxl models but the model is anima"):
        loader.load(compat_model, "sdxl_style.safetensors", 1.0)


@pytest.mark.parametrize("style, algo", STYLES)
def test_inspect_names_a_loras_family_depth_rank_and_alpha(comfy, tmp_path, style, algo):
    from modelsmith.core.report import format_report
    from modelsmith.core.inspect import inspect_file
    mods = {f"blocks.{i}.self_attn.q_proj": (64, 64) for i in range(40)}
    mods["llm_adapter.blocks.0.self_attn.q_proj"] = (32, 32)
    path = tmp_path / "l.safetensors"
    safetensors.torch.save_file(tiny_lora.make(style, algo, mods, rank=8, alpha=4.0), str(path))
    rep = inspect_file(path)
    lo = rep["lora"]
    assert rep["kind"] == "lora" and lo["family"] == "anima" and lo["anima_depth"] == 40 and lo["llm_adapter"]
    assert lo["modules"] == 41 and lo["algorithms"] == [algo]
    if algo == "lora":
        assert lo["rank"] == 8 and lo["alpha"] == [4.0]
    if algo == "loha":
        assert lo["alpha"] == [4.0]
    assert "for Anima 2.9b (40 blocks)" in format_report(rep)


def test_turbo_preset_takes_the_connected_lora(comfy, models_dir, compat_model):
    """With `turbo` on and a turbo LoRA chosen, the sampler applies it (checked) and samples 8 steps
    at CFG 1: the same latent as sampling a model that already carries the LoRA."""
    import nodes
    import tiny_anima
    from modelsmith.compat.qwen3 import load_text_encoder
    _save(models_dir, "anima-turbo-lora-v0.2.safetensors", tiny_lora.make("diffusion_model", "lora", _modules(32), seed=8))
    clip = load_text_encoder(tiny_anima.te_state_dict())
    s = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaSampler"]()
    assert s.INPUT_TYPES()["optional"]["turbo_lora"][1]["default"] == "anima-turbo-lora-v0.2.safetensors"
    args = dict(positive_text="1girl", negative_text="", size="custom", width=32, height=32, sampler_name="euler",
                scheduler="simple", seed=3, clip=clip, steps=30, cfg=4.0, turbo=True)
    with_lora = s.sample(compat_model, turbo_lora="anima-turbo-lora-v0.2.safetensors", **args)["result"][0]["samples"]
    without = s.sample(compat_model, turbo_lora="none", **args)["result"][0]["samples"]
    carried = _apply("modelsmith", compat_model, "anima-turbo-lora-v0.2.safetensors", 1.0)
    pre = s.sample(carried, turbo_lora="none", **args)["result"][0]["samples"]
    assert torch.equal(with_lora, pre) and not torch.equal(with_lora, without)


def test_merge_block_list_counts_every_anima_depth(tmp_path):
    from modelsmith.core import blocks as blk
    from modelsmith.core.inspect import inspect_file
    from modelsmith.core.safetensors_io import write_sparse
    for depth in (28, 40, 52):
        t = {"net.x_embedder.proj.1.weight": ("BF16", [2048, 68]), "net.llm_adapter.embed.weight": ("BF16", [32128, 1024]),
             "net.llm_adapter.blocks.0.cross_attn.q_proj.weight": ("BF16", [1024, 1024])}
        t.update({f"net.blocks.{i}.mlp.layer1.weight": ("BF16", [8192, 2048]) for i in range(depth)})
        write_sparse(tmp_path / f"a{depth}.safetensors", t)
        n = inspect_file(tmp_path / f"a{depth}.safetensors")["details"]["blocks"]
        names = blk.block_names("anima", t)
        assert n == depth and len(names) == 1 + 1 + depth + 1 and names[-1] == "llm_adapter" and f"blocks.{depth - 1}" in names
        assert blk.block_of(f"net.blocks.{depth - 1}.mlp.layer1.weight", "anima") == f"blocks.{depth - 1}"
        assert blk.block_of("net.llm_adapter.blocks.3.mlp.0.weight", "anima") == "llm_adapter"
        assert blk.parse_block_weights(f"B{depth - 1:02d}:0.3,llm_adapter:0", "anima", t) == {f"blocks.{depth - 1}": 0.3, "llm_adapter": 0.0}
        with pytest.raises(ValueError, match="unknown block"):
            blk.parse_block_weights(f"B{depth:02d}:0.3", "anima", t)
