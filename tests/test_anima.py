"""Anima on the pinned runtime through the compat layer: tiny model end to end, adapter, tokenizer."""
import pytest
import torch


def _graph(dm, te, vae, steps=2, turbo=False):
    return {
        "1": {"class_type": "ModelsmithAnimaLoader", "inputs": {"diffusion_model": dm, "text_encoder": te, "vae": vae,
                                                                "dtype": "auto"}},
        "2": {"class_type": "ModelsmithAnimaSampler", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "positive_text": "masterpiece, 1girl, smile",
            "negative_text": "worst quality", "size": "custom", "width": 64, "height": 64, "steps": steps,
            "cfg": 4.0, "sampler_name": "er_sde", "scheduler": "simple", "seed": 5, "turbo": turbo}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "anima_tiny"}},
    }


FILES = ("anima-tiny.safetensors", "qwen_3_06b_base.safetensors", "qwen_image_vae.safetensors")


def test_tiny_anima_in_process(run_graph, anima_files, output_dir):
    import numpy as np
    from PIL import Image
    executor, _ = run_graph(_graph(*FILES))
    img = executor.history_result["outputs"]["3"]["images"][0]
    arr = np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"]))
    assert arr.shape == (64, 64, 3) and np.isfinite(arr).all()


def test_tiny_anima_over_http(server, anima_files):
    hist = server.queue_and_wait(_graph(*FILES))
    assert hist["status"]["status_str"] == "success", hist["status"]
    assert len(hist["outputs"]["3"]["images"]) == 1


def test_loader_settings_and_sampling(comfy, anima_files):
    import nodes
    import comfy.model_sampling
    model, clip, vae, settings = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(*FILES, "auto")
    assert settings["family"] == "anima" and settings["backend"] == "modelsmith compat"
    assert settings["recommended"]["sampler"] == "er_sde" and settings["recommended"]["shift"] == 3.0
    ms = model.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.CONST) and ms.shift == 3.0 and ms.multiplier == 1.0
    assert type(model.model.latent_format).__name__ == "Wan21"


def test_wrong_files_are_named(comfy, anima_files, tiny_files, models_dir):
    import shutil
    import nodes
    loader = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]()
    shutil.copy(tiny_files["sdxl"], models_dir / "diffusion_models" / "sdxl_as_dit.safetensors")
    with pytest.raises(Exception, match="expected an Anima diffusion model") as e:
        loader.load("sdxl_as_dit.safetensors", FILES[1], FILES[2])
    assert "sdxl" in str(e.value)
    import safetensors.torch
    safetensors.torch.save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(8, 8),
                                 "shared.weight": torch.zeros(10, 8)},
                                str(models_dir / "text_encoders" / "t5_small.safetensors"))
    with pytest.raises(Exception, match="T5 encoder; expected the Qwen3-0.6B"):
        loader.load(FILES[0], "t5_small.safetensors", FILES[2])
    shutil.copy(anima_files["te"], models_dir / "vae" / "not_a_vae.safetensors")
    with pytest.raises(Exception, match="not a Wan 2.1"):
        loader.load(FILES[0], FILES[1], "not_a_vae.safetensors")


def test_adapter_shapes_masking_and_weights(comfy):
    from modelsmith.compat.anima import CONTEXT_TOKENS, LLMAdapter, adapter_context
    import tiny
    torch.manual_seed(0)
    ad = LLMAdapter(dim=32, source_dim=64, layers=2, heads=1)
    tiny.randomize(ad, 3)
    llm = torch.randn(1, 7, 64)
    ids = torch.tensor([[209, 18722, 3, 6, 3993, 1]])
    out = adapter_context(ad, llm, ids)
    assert out.shape == (1, CONTEXT_TOKENS, 32)
    assert out[:, 6:].abs().max() == 0 and out[:, :6].abs().min() > 0  # prompt tokens, then zero padding
    w = torch.tensor([1.2, 1.2, 1.0, 1.0, 1.0, 1.0]).view(1, -1, 1)
    weighted = adapter_context(ad, llm, ids, w)
    assert torch.allclose(weighted[:, :6], out[:, :6] * w) and weighted[:, 6:].abs().max() == 0
    # a masked-out LLM token changes nothing, an unmasked one does
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    changed = llm.clone()
    changed[:, 6] += 5.0
    assert torch.allclose(adapter_context(ad, llm, ids, source_mask=mask), adapter_context(ad, changed, ids, source_mask=mask), atol=1e-6)
    assert not torch.allclose(adapter_context(ad, llm, ids), adapter_context(ad, changed, ids), atol=1e-4)


def test_tokenizer_real_ids(comfy):
    from modelsmith.compat.qwen3 import AnimaTokenizer
    t = AnimaTokenizer().tokenize_with_weights("hello world")
    assert [x[0] for x in t["qwen3_06b"][0]] == [14990, 1879]       # Qwen2 BPE, no start/end tokens
    assert [x[0] for x in t["t5xxl"][0]] == [21820, 296, 1]         # T5 sentencepiece + </s>
    t = AnimaTokenizer().tokenize_with_weights("(1girl:1.2), smile")
    assert all(x[1] == 1.0 for x in t["qwen3_06b"][0])               # the LLM sees unweighted ids
    assert [x[1] for x in t["t5xxl"][0]][:2] == [1.2, 1.2]           # weights travel with the T5 ids


def test_conditioning_carries_t5_ids(comfy, anima_files):
    import nodes
    _, clip, _, _ = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(*FILES, "auto")
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("hello world"))
    extra = cond[0][1]
    assert extra["t5xxl_ids"].tolist() == [21820, 296, 1]
    assert cond[0][0].shape == (1, 2, 64)


def _native():
    import comfy.supported_models
    return hasattr(comfy.supported_models, "Anima")


def _need_native():
    if not _native():
        pytest.skip("native Anima only on current ComfyUI (0.29); 0.3.75 has none")


def test_native_anima_is_preferred_where_a_runtime_adds_it_0375_standin(comfy, monkeypatch):
    """On a runtime without Anima (0.3.75), a stand-in entry in the model registry makes the pack
    use native. On a runtime with Anima, native loading is tested for real (tests below)."""
    import comfy.supported_models
    from modelsmith.compat import anima
    if _native():
        assert anima.native_anima_available()
        return
    assert not anima.native_anima_available()
    monkeypatch.setattr(comfy.supported_models, "Anima", type("Anima", (), {}), raising=False)
    assert anima.native_anima_available()


@pytest.fixture(scope="module")
def native_shaped_dit(comfy):
    """A 3-block DiT whose LLM adapter has the fixed sizes of core's native Anima (bf16, 135 M params)."""
    import tiny_anima
    return tiny_anima.dit_state_dict(seed=3, blocks=3, adapter=tiny_anima.NATIVE_ADAPTER, dtype=torch.bfloat16)


def test_native_anima_0_29_builds_the_depth_of_the_file_and_matches_compat(comfy, native_shaped_dit):
    """Core's native Anima built by the pack at the file's depth (core's detection assumes 28 blocks
    for width 2048, and default heads/AdaLN widths otherwise), and the same weights in the compat
    Anima give the same denoiser and adapter outputs (fp32; tolerance 1e-5 relative)."""
    _need_native()
    import comfy.ldm.anima.model
    from modelsmith.compat import anima
    nat = anima.load_native_anima(dict(native_shaped_dit), torch.float32)
    com = anima.load_anima_model(dict(native_shaped_dit), torch.float32)
    dit = nat.model.diffusion_model
    assert type(dit) is comfy.ldm.anima.model.Anima and len(dit.blocks) == 3
    from comfy_env import builds_anima_at_file_depth
    # 0.29's detection assumes 28 blocks; 0.33's counts them (then only heads/AdaLN are corrected)
    corrected = {"num_heads", "adaln_lora_dim"} | (set() if builds_anima_at_file_depth() else {"num_blocks"})
    assert set(nat.modelsmith_native_corrected) >= corrected
    assert builds_anima_at_file_depth() is ("num_blocks" not in nat.modelsmith_native_corrected)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 1, 8, 8, generator=g), torch.tensor([0.3, 0.7])
    ctx, ids = torch.randn(2, 7, 1024, generator=g), torch.randint(0, 32128, (2, 5), generator=g)
    with torch.no_grad():
        a = dit(x, t, ctx, t5xxl_ids=ids)
        b = com.model.diffusion_model(x, t, ctx, t5xxl_ids=ids)
        pa = dit.preprocess_text_embeds(ctx, ids)
        pb = anima.adapter_context(com.model.diffusion_model.llm_adapter, ctx, ids)
    assert float((a - b).norm() / b.norm()) < 1e-5
    assert pa.shape == pb.shape == (2, 512, 1024) and float((pa - pb).norm() / pb.norm()) < 1e-5
    odd = torch.randn(2, 16, 1, 25, 31, generator=g)  # 200x248 px: not a multiple of the 2x2 patch
    with torch.no_grad():
        a, b = dit(odd, t, ctx, t5xxl_ids=ids), com.model.diffusion_model(odd, t, ctx, t5xxl_ids=ids)
    assert a.shape == b.shape == odd.shape and float((a - b).norm() / b.norm()) < 1e-5


def test_native_anima_0_29_refuses_a_truncated_build(comfy, native_shaped_dit, monkeypatch):
    """If the native model ever ends up with fewer blocks than the file, the load is refused."""
    _need_native()
    from modelsmith.compat import anima
    monkeypatch.setattr(anima, "_DEPTH_KEYS", ("num_heads", "adaln_lora_dim", "crossattn_emb_channels"))
    import comfy.model_detection  # 0.33 counts the blocks itself: make its detection miss one
    real_count = comfy.model_detection.count_blocks
    monkeypatch.setattr(comfy.model_detection, "count_blocks",
                        lambda keys, prefix: real_count(keys, prefix) - (1 if prefix.endswith("blocks.{}.") else 0))
    sd = {k: v for k, v in native_shaped_dit.items()}
    with pytest.raises(anima.ModelsmithError, match="refused"):
        anima.load_native_anima(sd, torch.float32)


def test_compat_registers_nothing(comfy):
    import comfy.supported_models
    import comfy.model_detection
    before = (list(comfy.supported_models.models), dict(vars(comfy.model_detection)))
    import importlib
    from modelsmith.compat import anima
    importlib.reload(anima)
    assert list(comfy.supported_models.models) == before[0]
    assert {k: id(v) for k, v in vars(comfy.model_detection).items()} == {k: id(v) for k, v in before[1].items()}


def test_fp16_loader_gets_the_fp32_residual_path(comfy, anima_files):
    import nodes
    model, *_ = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(*FILES, "fp16")
    dit = model.model.diffusion_model
    if model.model.manual_cast_dtype is None:  # fp16 computes natively on this device
        assert getattr(dit, "modelsmith_fp32_residual", False)
    else:  # the device computes fp16 weights in another dtype (CPU): no fp16 residual to protect
        assert model.model.manual_cast_dtype != torch.float16


def _scaled_dit(dtype, scale=10000.0, blocks=4):
    """The tiny DiT with MLP output weights scaled up: the residual stream grows past fp16's 65504
    over the blocks while each block's own MLP output stays inside it (what real Anima does)."""
    import comfy.ops
    import tiny_anima
    from modelsmith.compat import anima
    sd = tiny_anima.dit_state_dict(seed=4, blocks=blocks)
    cfg = anima.dit_config_from_sd(sd, "net.")
    cfg.pop("image_model")
    m = anima.AnimaDiT(**cfg, operations=comfy.ops.disable_weight_init, device="cpu", dtype=dtype)
    state = {k[len("net."):]: (v * scale if k.endswith("mlp.layer2.weight") and k.startswith("net.blocks.") else v)
             for k, v in sd.items()}
    m.load_state_dict(state)
    return m.to(dtype).eval()


def test_fp16_residual_stays_finite_and_close_to_fp32(comfy):
    from modelsmith.compat.fp16_residual import enable_fp32_residual
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(1, 16, 1, 8, 8, generator=g), torch.randn(1, 512, 32, generator=g), torch.tensor([0.5])
    peak = []
    m32 = _scaled_dit(torch.float32)
    for b in m32.blocks:
        b.register_forward_hook(lambda mod, a, o: peak.append(float(o.abs().max())))
    with torch.no_grad():
        ref = m32(x, t, ctx)
        naive = _scaled_dit(torch.float16)(x.half(), t.half(), ctx.half())
        m16 = _scaled_dit(torch.float16)
        enable_fp32_residual(m16)
        safe = m16(x.half(), t.half(), ctx.half())
    assert max(peak) > 65504                       # the fp32 residual really outgrows fp16
    assert not torch.isfinite(naive).all()         # so the naive fp16 forward overflows
    assert torch.isfinite(safe).all()              # the pack's fp16 forward does not
    rel = float((safe.float() - ref).norm() / ref.norm())
    assert rel < 5e-3, rel                         # stated tolerance: 0.5% relative (measured ~0.1%)


def test_tune_with_extra_blocks_loads(comfy):
    import tiny_anima
    from modelsmith.compat.anima import load_anima_model
    model = load_anima_model(tiny_anima.dit_state_dict(seed=9, blocks=3))
    assert len(model.model.diffusion_model.blocks) == 3


def test_turbo_is_8_steps_at_cfg_1(comfy, anima_files):
    import nodes
    model, clip, _, _ = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(*FILES, "auto")
    s = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaSampler"]()
    args = dict(positive_text="1girl", negative_text="", size="custom", width=32, height=32, sampler_name="euler",
                scheduler="simple", seed=3, clip=clip)
    turbo = s.sample(model, steps=30, cfg=4.0, turbo=True, **args)["result"][0]["samples"]
    ran = s.sample(model, steps=8, cfg=1.0, turbo=False, **args)
    plain = ran["result"][0]["samples"]
    other = s.sample(model, steps=30, cfg=4.0, turbo=False, **args)["result"][0]["samples"]
    assert torch.equal(turbo, plain) and not torch.equal(turbo, other)
    assert turbo.shape == (1, 16, 1, 4, 4)
    # settings far from the record's (30 steps, CFG 4, ~1 MP) are named in the report
    report = ran["ui"]["text"][0]
    assert "32x32 is far from" in report and "8 steps: about 30" in report and "CFG 1: about 4" in report



@pytest.fixture(scope="module")
def native_files(comfy, models_dir, native_shaped_dit):
    import safetensors.torch
    import tiny_anima
    dm = models_dir / "diffusion_models" / "anima-native-shaped.safetensors"
    te = models_dir / "text_encoders" / "qwen3_1024_tiny.safetensors"
    safetensors.torch.save_file(native_shaped_dit, str(dm))
    safetensors.torch.save_file(tiny_anima.te_state_dict(seed=5, hidden=1024, dtype=torch.bfloat16), str(te))
    if not (models_dir / "vae" / "qwen_image_vae.safetensors").exists():
        tiny_anima.save(models_dir)
    yield dm.name, te.name, "qwen_image_vae.safetensors"
    dm.unlink(missing_ok=True)
    te.unlink(missing_ok=True)


def test_anima_loader_node_0_29_uses_native_anima_and_samples(run_graph, native_files, output_dir):
    """The Anima loader on 0.29: core's native Anima at the file's depth (3 blocks), its report saying
    so, and a 2-step sample through the Anima Sampler to an image."""
    _need_native()
    import comfy.ldm.anima.model
    import nodes
    import numpy as np
    from PIL import Image
    model, clip, vae, settings = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(*native_files, "auto")
    assert type(model.model.diffusion_model) is comfy.ldm.anima.model.Anima
    assert len(model.model.diffusion_model.blocks) == 3 and settings["backend"] == "native"
    assert "ComfyUI's native Anima, 3 blocks" in settings["report"]
    executor, _ = run_graph(_graph(*native_files))
    img = executor.history_result["outputs"]["3"]["images"][0]
    arr = np.asarray(Image.open(output_dir / img["subfolder"] / img["filename"]))
    assert arr.shape == (64, 64, 3) and arr.std() > 0


def test_anima_loader_refuses_a_text_encoder_of_another_width(comfy, anima_files, native_files):
    """A 64-wide Qwen3 with a DiT whose adapter reads 1024-wide states (and the reverse): one clear
    error naming both widths, before anything is built."""
    import nodes
    loader = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]()
    with pytest.raises(Exception, match=r"qwen3 \(64 wide\) text encoder.*reads qwen3-0.6b states \(1024 wide\)"):
        loader.load(native_files[0], FILES[1], FILES[2])
    with pytest.raises(Exception, match=r"1024-wide text encoder.*reads 64-wide"):
        loader.load(FILES[0], native_files[1], FILES[2])


def test_empty_prompt_conditioning_is_finite_and_as_upstream(comfy, anima_files):
    """The empty prompt (a common empty negative) is one pad token with nothing unmasked: 0.3.75's
    Llama code turned that into NaN everywhere; upstream (0.29) masks with a finite minimum, so the
    token attends to itself. The pack gives that result on both runtimes; on 0.29 it is checked
    against the runtime's own Llama code run with the all-zero mask."""
    import comfy.text_encoders.llama as llama
    import nodes
    _, clip, _, _ = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(*FILES, "auto")
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))[0][0]
    assert empty.shape[1] == 1 and torch.isfinite(empty).all() and empty.abs().sum() > 0
    one = clip.encode_from_tokens_scheduled(clip.tokenize("1girl"))[0][0]
    assert torch.isfinite(one).all()
    if hasattr(llama, "Qwen3_06BConfig"):  # 0.29: the runtime's own masking, without the pack's fix
        te = clip.cond_stage_model.qwen3_06b.transformer
        ids = torch.tensor([[151643]])
        with torch.no_grad():
            raw = te.model(ids, torch.zeros(1, 1, dtype=torch.long), dtype=torch.float32)[0]
            ours = te(ids, torch.zeros(1, 1, dtype=torch.long), dtype=torch.float32)[0]
        assert torch.isfinite(raw).all() and torch.allclose(raw, ours, rtol=1e-6, atol=1e-6)


def test_latent_sizes_that_are_not_a_multiple_of_the_patch_run(comfy):
    """A 200x248 px image is a 25x31 latent: not a multiple of the 2x2 patch. The compat DiT pads and
    crops back as current ComfyUI does (0.3.75 asserted); on 0.29 the native-equivalence test compares it."""
    import tiny_anima
    from modelsmith.compat import anima
    sd = tiny_anima.dit_state_dict(seed=2, blocks=2)
    m = anima.load_anima_model(dict(sd), torch.float32).model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 1, 25, 31, generator=g), torch.tensor([0.4, 0.8])
    ctx, ids = torch.randn(2, 5, 64, generator=g), torch.randint(0, 32128, (2, 4), generator=g)
    with torch.no_grad():
        out = m(x, t, ctx, t5xxl_ids=ids)
    assert out.shape == x.shape and torch.isfinite(out).all()


def _sparse_anima(path, blocks, source=1024, extra=None):
    from modelsmith.core.safetensors_io import write_sparse
    t = {"net.x_embedder.proj.1.weight": ("BF16", [2048, 68]), "net.final_layer.linear.weight": ("BF16", [64, 2048]),
         "net.llm_adapter.embed.weight": ("BF16", [32128, 1024])}
    for i in range(6):
        t[f"net.llm_adapter.blocks.{i}.cross_attn.q_proj.weight"] = ("BF16", [1024, 1024])
        t[f"net.llm_adapter.blocks.{i}.cross_attn.k_proj.weight"] = ("BF16", [1024, source])
    for i in range(blocks):
        t[f"net.blocks.{i}.mlp.layer1.weight"] = ("BF16", [8192, 2048])
        t[f"net.blocks.{i}.self_attn.q_proj.weight"] = ("BF16", [2048, 2048])
    t.update(extra or {})
    write_sparse(path, t)


def _qwen35_te(path, width=2560):
    import safetensors.torch
    p = "model.language_model."
    safetensors.torch.save_file({p + "embed_tokens.weight": torch.zeros(16, width),
                                 p + "layers.0.input_layernorm.weight": torch.ones(width),
                                 p + "layers.0.linear_attn.A_log": torch.zeros(4),
                                 p + "layers.0.linear_attn.in_proj_a.weight": torch.zeros(4, width)}, str(path))


def test_text_encoder_of_another_anima_variant_is_refused(comfy, anima_files, native_files, models_dir):
    """A 28-block Anima with a Qwen3.5-4B encoder, a 52-block (3.8B) Anima with Qwen3-0.6B, and the
    3.8B with its own Qwen3.5-4B (whose linear-attention layers the pack does not run): each one
    clear error naming both files' kinds, before the denoiser is read; a DiT with modules the pack
    does not know is refused rather than loaded without them."""
    import nodes
    from modelsmith.core.inspect import inspect_file
    dm, te = models_dir / "diffusion_models", models_dir / "text_encoders"
    _sparse_anima(dm / "anima-2b-sparse.safetensors", 28)
    _sparse_anima(dm / "anima-3.8b-sparse.safetensors", 52, source=2560)
    _sparse_anima(dm / "anima-extra-sparse.safetensors", 28, extra={"net.text_connector.proj.weight": ("BF16", [1024, 2560])})
    _qwen35_te(te / "qwen3.5_4b_tiny.safetensors")
    assert inspect_file(te / "qwen3.5_4b_tiny.safetensors")["components"]["text_encoders"] == ["qwen3.5-4b"]
    loader = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]()
    with pytest.raises(Exception, match=r"is a qwen3.5-4b text encoder, but anima-2b-sparse.safetensors is a 28-block "
                                        r"Anima \(2b\) whose LLM adapter reads qwen3-0.6b states \(1024 wide\)"):
        loader.load("anima-2b-sparse.safetensors", "qwen3.5_4b_tiny.safetensors", FILES[2])
    with pytest.raises(Exception, match=r"is a qwen3-0.6b text encoder, but anima-3.8b-sparse.safetensors is a 52-block "
                                        r"Anima \(3.8b\) whose LLM adapter reads qwen3.5-4b states \(2560 wide\)"):
        loader.load("anima-3.8b-sparse.safetensors", native_files[1], FILES[2])
    with pytest.raises(Exception, match=r"qwen3.5-4b text encoder .*cannot run Qwen3.5"):
        loader.load("anima-3.8b-sparse.safetensors", "qwen3.5_4b_tiny.safetensors", FILES[2])
    with pytest.raises(Exception, match=r"holds modules Modelsmith's Anima does not know \(text_connector\)"):
        loader.load("anima-extra-sparse.safetensors", FILES[1], FILES[2])
    for p in ("anima-2b-sparse", "anima-3.8b-sparse", "anima-extra-sparse"):
        (dm / f"{p}.safetensors").unlink()


@pytest.mark.parametrize("blocks", [28, 40, 52])
def test_every_anima_depth_loads_whole(comfy, blocks):
    """A tiny Anima (64 wide) at each real depth builds every block, on the compat path and, on 0.29,
    as native Anima at the file's depth where core's detection alone would assume 28."""
    import tiny_anima
    from modelsmith.compat import anima
    sd = tiny_anima.dit_state_dict(seed=blocks, blocks=blocks)
    m = anima.load_anima_model(dict(sd), torch.float32)
    assert len(m.model.diffusion_model.blocks) == blocks
    assert anima.anima_config(sd)["num_blocks"] == blocks
    if _native():
        nsd = tiny_anima.dit_state_dict(seed=blocks, blocks=blocks, adapter=tiny_anima.NATIVE_ADAPTER, dtype=torch.bfloat16)
        n = anima.load_native_anima(nsd, torch.float32)
        from comfy_env import builds_anima_at_file_depth
        assert len(n.model.diffusion_model.blocks) == blocks
        assert ("num_blocks" in n.modelsmith_native_corrected) is not builds_anima_at_file_depth()
