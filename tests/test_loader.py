"""ModelsmithCheckpointLoader inside the real runtime: prediction and ZTSNR applied from the file."""
import pytest

from modelsmith.core.errors import ModelsmithError


def _load(comfy, name, prediction="auto"):
    import nodes
    cls = nodes.NODE_CLASS_MAPPINGS["ModelsmithCheckpointLoader"]
    return cls().load(name, prediction)


def _sampling(model):
    import comfy.model_sampling
    ms = model.get_model_object("model_sampling")
    return ms, isinstance(ms, comfy.model_sampling.V_PREDICTION)


def test_vpred_ztsnr_file_samples_with_v_and_ztsnr_sigmas(comfy, tiny_files):
    model, clip, vae, settings = _load(comfy, "tiny_sdxl_vpred_ztsnr.safetensors")
    ms, is_v = _sampling(model)
    assert is_v
    assert settings["prediction"] == "v" and settings["ztsnr"] is True
    # ZTSNR: the last alphas_cumprod is clamped to 4.8973451890853435e-08, so sigma_max = sqrt((1-a)/a)
    a_last = 4.8973451890853435e-08
    assert float(ms.sigmas[-1]) == pytest.approx(((1 - a_last) / a_last) ** 0.5, rel=1e-5)
    assert settings["recommended"]["cfg"] <= 5


def test_eps_file_is_plain_eps(comfy, tiny_files):
    model, _, _, settings = _load(comfy, "tiny_sdxl.safetensors")
    ms, is_v = _sampling(model)
    assert not is_v and float(ms.sigmas[-1]) < 20
    assert settings["prediction"] == "eps" and not settings["ztsnr"]


def test_override_on_a_file_without_markers(comfy, tiny_files):
    model, _, _, settings = _load(comfy, "tiny_sdxl_nomarker.safetensors", "v+ztsnr")
    ms, is_v = _sampling(model)
    assert is_v and float(ms.sigmas[-1]) > 4000
    assert any("overridden" in w for w in settings["warnings"])
    model, _, _, _ = _load(comfy, "tiny_sdxl_nomarker.safetensors", "v")
    ms, is_v = _sampling(model)
    assert is_v and float(ms.sigmas[-1]) < 20


def test_loader_refuses_a_denoiser_only_file(comfy, models_dir):
    import corpus
    p = models_dir / "checkpoints" / "unet_only_sd1.safetensors"
    corpus.write(p, corpus.unet_table("sd1"))
    # the pack as ComfyUI loaded it is a second copy of the modules: compare the class by name
    with pytest.raises(Exception, match="not a single-file checkpoint") as e:
        _load(comfy, "unet_only_sd1.safetensors")
    assert type(e.value).__name__ == ModelsmithError.__name__
    p.unlink()


def test_save_writes_markers_back(comfy, tiny_files, output_dir, run_graph):
    from modelsmith.core.inspect import inspect_file
    g = {"1": {"class_type": "ModelsmithCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl_nomarker.safetensors",
                                                                       "prediction": "v+ztsnr"}},
         "2": {"class_type": "ModelsmithSaveCheckpoint", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                                    "filename_prefix": "checkpoints/resaved"}}}
    executor, _ = run_graph(g)
    path = executor.history_result["outputs"]["2"]["text"][0]
    rep = inspect_file(path)
    assert (rep["family"], rep["prediction"], rep["ztsnr"]) == ("sdxl", "v", True)


@pytest.mark.parametrize("kind,table,loader", [
    ("vae", {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, "VAELoader"),
    ("lora", {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight": (4, 640),
              "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_up.weight": (640, 4)}, "LoraLoader")])
def test_loader_given_a_vae_or_lora_names_its_core_loader(comfy, models_dir, kind, table, loader):
    """The checkpoint loader gives the same hint as Inspect for a file without a denoiser (it used to
    say 'a unknown file ... load it with a diffusion-model loader')."""
    from modelsmith.core.safetensors_io import write_sparse
    p = models_dir / "checkpoints" / f"a_{kind}.safetensors"
    write_sparse(p, {k: ("F16", s) for k, s in table.items()})
    try:
        with pytest.raises(Exception, match=loader) as e:
            _load(comfy, p.name)
        assert "diffusion-model loader" not in str(e.value) and "unknown" not in str(e.value)
    finally:
        p.unlink()
