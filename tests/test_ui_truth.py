"""The nodes tell the truth (issue #19): no silent fallback for a missing CLIP or VAE, what runs is
what the node shows, dropped tags shown, batch sizes, tooltips everywhere, honest file lists."""
import pytest
import safetensors.torch
import torch


def _run_error(run_graph, graph):
    """(node id, message) of the execution error a graph ends with; fails if it succeeds."""
    with pytest.raises(AssertionError, match="execution failed") as e:
        run_graph(graph)
    return str(e.value)


def _builder(convention="anima", clip=None):
    inputs = {"convention": convention, "quality": "masterpiece", "score": "", "period": "newest, year 2023",
              "rating": "safe", "count": "1girl", "character": "", "series": "", "artist": "", "general": "smile",
              "description": ""}
    if clip:
        inputs["clip"] = clip
    return {"class_type": "ModelsmithAnimaPrompt", "inputs": inputs}


def _sdxl_sampler(pos, neg, vae=None, model=("1", 0), **kw):
    inputs = {"model": list(model), "positive": pos, "negative": neg, "prediction": "auto", "size": "custom",
              "width": 64, "height": 64, "steps": 1, "cfg": 0.0, "cfg_rescale": "auto", "rescale_phi": 0.7,
              "sampler_name": "euler", "scheduler": "normal", "seed": 1, "denoise": 1.0, **kw}
    if vae:
        inputs["vae"] = vae
    return {"class_type": "ModelsmithSDXLSampler", "inputs": inputs}


def test_prompt_builder_without_clip_is_an_error_not_a_silent_empty_prompt(run_graph, tiny_files):
    g = {"1": {"class_type": "ModelsmithCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl.safetensors",
                                                                      "prediction": "auto"}},
         "2": _builder(),
         "3": _sdxl_sampler(["2", 2], ["2", 3])}
    msg = _run_error(run_graph, g)
    assert "'2'" in msg or "ModelsmithAnimaPrompt" in msg
    assert "no CLIP is connected" in msg
    g["2"] = _builder(clip=["1", 1])  # with the CLIP it runs
    executor, _ = run_graph(g)


def test_empty_conditioning_into_the_samplers_is_an_error(comfy, anima_files):
    import nodes
    s = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaSampler"]()
    model, clip, _, _ = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(
        "anima-tiny.safetensors", "qwen_3_06b_base.safetensors", "qwen_image_vae.safetensors", "auto")
    with pytest.raises(Exception, match="positive input is connected but carries no conditioning"):
        s.sample(model, "1girl", "", "custom", 32, 32, 2, 4.0, "euler", "simple", 1, False, clip=clip, positive=[])
    prompt = {"9": {"class_type": "ModelsmithAnimaSampler", "inputs": {"negative": ["3", 3]}}}
    with pytest.raises(Exception, match="negative input is connected but carries no conditioning"):
        s.sample(model, "1girl", "", "custom", 32, 32, 2, 4.0, "euler", "simple", 1, False, clip=clip, negative=None,
                 prompt=prompt, unique_id="9")


@pytest.fixture(scope="module")
def novae_ckpt(tiny_files, models_dir):
    sd = safetensors.torch.load_file(str(tiny_files["sdxl"]))
    path = models_dir / "checkpoints" / "tiny_sdxl_novae.safetensors"
    safetensors.torch.save_file({k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}, str(path))
    yield path.name
    path.unlink()


def test_no_vae_is_said_before_any_work(run_graph, tiny_files, novae_ckpt):
    """A checkpoint without a VAE whose VAE output is used: the loader says so before loading; a
    sampler whose IMAGE output is used without a VAE: it says so before sampling (never a NoneType
    error after the work, never core Save Image failing on None)."""
    g = {"1": {"class_type": "ModelsmithCheckpointLoader", "inputs": {"ckpt_name": novae_ckpt, "prediction": "auto"}},
         "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a"}},
         "3": _sdxl_sampler(["2", 0], ["2", 0], vae=["1", 2]),
         "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "novae"}}}
    msg = _run_error(run_graph, g)
    assert "has no VAE, but this loader's VAE output is connected" in msg and "'NoneType'" not in msg
    del g["3"]["inputs"]["vae"]
    msg = _run_error(run_graph, g)
    assert "IMAGE output is used but no VAE is connected" in msg and "'NoneType'" not in msg
    del g["4"]  # LATENT only: no VAE needed
    executor, _ = run_graph(g)


def test_turbo_shows_what_runs_and_batch_size(comfy, anima_files):
    import nodes
    s = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaSampler"]()
    model, clip, vae, _ = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"]().load(
        "anima-tiny.safetensors", "qwen_3_06b_base.safetensors", "qwen_image_vae.safetensors", "auto")
    out = s.sample(model, "1girl", "", "custom", 32, 32, 30, 4.0, "euler", "simple", 1, True, clip=clip, vae=vae,
                   batch_size=2)
    text = out["ui"]["text"][0]
    assert "8 steps, CFG 1" in text and "turbo: ran 8 steps at CFG 1" in text and text.startswith("2 x 32x32")
    assert out["result"][0]["samples"].shape[0] == 2 and out["result"][1].shape[0] == 2


def test_sdxl_sampler_batch_size(comfy, tiny_files):
    import nodes
    model, clip, vae = nodes.NODE_CLASS_MAPPINGS["ModelsmithCheckpointLoader"]().load("tiny_sdxl.safetensors")[:3]
    cond = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, "a")[0]
    out = nodes.NODE_CLASS_MAPPINGS["ModelsmithSDXLSampler"]().sample(
        model, cond, cond, "auto", "custom", 64, 64, 1, 0.0, "auto", 0.7, "euler", "normal", 1, 1.0, vae=vae, batch_size=3)
    assert out["result"][0]["samples"].shape[0] == 3 and out["result"][1].shape[0] == 3


def test_prompt_builder_shows_what_the_convention_dropped(comfy):
    import nodes
    b = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaPrompt"]()
    out = b.build("pony", "masterpiece", "", "newest, year 2023", "safe", "1girl", "", "", "", "smile", "")
    shown = "\n".join(out["ui"]["text"])
    assert "newest: no pony equivalent, dropped" in shown and "year 2023: no pony equivalent, dropped" in shown
    assert "newest" not in out["result"][0]


def test_prompt_builder_shows_the_guides_anima_advice(comfy):
    import nodes
    b = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaPrompt"]()
    shown = "\n".join(b.build("anima", "masterpiece", "", "", "safe", "1girl", "", "", "", "smile", "")["ui"]["text"])
    assert "No artist tag" in shown and "Danbooru tags only" in shown
    shown = "\n".join(b.build("anima", "masterpiece", "", "", "safe", "1girl", "", "", "wlop", "smile",
                              "She smiles in a garden.")["ui"]["text"])
    assert "No artist tag" not in shown and "Danbooru tags only" not in shown
    shown = "\n".join(b.build("pony", "masterpiece", "", "", "safe", "1girl", "", "", "", "smile", "")["ui"]["text"])
    assert "No artist tag" not in shown  # Anima's advice, for Anima prompts only


def test_anima_loader_lists_only_files_that_exist(comfy, tmp_path, monkeypatch):
    """In an empty folder the loader lists nothing (no default name shown as if present)."""
    import folder_paths
    import nodes
    # a listing cache of its own: the empty folders' listings must not outlive this test
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    for folder in ("diffusion_models", "text_encoders", "vae"):
        empty = tmp_path / folder
        empty.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder,
                            ([str(empty)], folder_paths.folder_names_and_paths[folder][1]))
    spec = nodes.NODE_CLASS_MAPPINGS["ModelsmithAnimaLoader"].INPUT_TYPES()["required"]
    for name in ("diffusion_model", "text_encoder", "vae"):
        assert spec[name][0] == [] and "default" not in spec[name][1], name


def test_every_input_of_every_node_has_a_tooltip(server):
    info = server.get("/object_info")
    missing = [f"{node}.{name}" for node, i in info.items() if node.startswith("Modelsmith")
               for sec in ("required", "optional") for name, spec in (i["input"].get(sec) or {}).items()
               if not (len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("tooltip"))]
    assert missing == []
    assert "dare_seed" in info["ModelsmithMergeCheckpoints"]["input"]["optional"]
    assert "seed" not in info["ModelsmithMergeCheckpoints"]["input"]["required"]  # no automatic randomize


def test_corrupt_files_say_to_download_again(tmp_path):
    from modelsmith.core.errors import ModelsmithError
    from modelsmith.core.inspect import inspect_file
    p = tmp_path / "cut.safetensors"
    p.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}")
    with pytest.raises(ModelsmithError, match="download it again"):
        inspect_file(p)
    c = tmp_path / "cut.ckpt"
    torch.save({"a": torch.zeros(1000)}, c)
    c.write_bytes(c.read_bytes()[:-300])
    with pytest.raises(ModelsmithError, match="download it again"):
        inspect_file(c)


def test_inspect_node_says_what_the_running_comfyui_would_do_with_an_anima(comfy, models_dir):
    import nodes
    from modelsmith.compat.anima import native_anima_available
    from test_anima import _sparse_anima
    path = models_dir / "diffusion_models" / "anima-40-inspect.safetensors"
    _sparse_anima(path, 40)
    import folder_paths
    folder_paths.filename_list_cache.pop("diffusion_models", None)  # as the UI's refresh does
    try:
        out = nodes.NODE_CLASS_MAPPINGS["ModelsmithInspect"]().inspect("diffusion_models/anima-40-inspect.safetensors")
        text = out["ui"]["text"][0]
        from comfy_env import builds_anima_at_file_depth
        if builds_anima_at_file_depth():  # 0.33: core builds a tune at its own depth
            assert "The running ComfyUI has native Anima and its stock loaders build all 40 blocks" in text
        elif native_anima_available():  # 0.29: 28 blocks whatever the file holds
            assert "The running ComfyUI has native Anima: its stock loaders would build 28 of the 40 blocks" in text
        else:
            assert "The running ComfyUI has no native Anima" in text
        assert "40 blocks, 2048 wide" in text
    finally:
        path.unlink()
