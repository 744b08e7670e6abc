"""SDXL sampling: ZTSNR schedule and CFG rescale formulas, and the node against core graphs."""
import math

import pytest
import torch

from modelsmith.core import resolution, schedules


def test_ztsnr_schedule_formula():
    ac = schedules.sd_alphas_cumprod()
    z = schedules.ztsnr_alphas_cumprod(ac)
    assert float(z[-1]) == 4.8973451890853435e-08
    assert float(z[0]) == pytest.approx(float(ac[0]), rel=1e-12)
    # the formula written out element by element
    s = [math.sqrt(a) for a in ac.tolist()]
    s0, sT = s[0], s[-1]
    for i in (1, 10, 500, 998):
        expect = ((s[i] - sT) * s0 / (s0 - sT)) ** 2
        assert float(z[i]) == pytest.approx(expect, rel=1e-9)


def test_cfg_rescale_formula_on_fixed_tensors():
    g = torch.Generator().manual_seed(0)
    x_cfg, x_cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g) * 0.5
    out = schedules.rescale_cfg(x_cfg, x_cond, 0.7)
    for b in range(2):
        ratio = x_cond[b].std() / x_cfg[b].std()
        expect = 0.7 * x_cfg[b] * ratio + 0.3 * x_cfg[b]
        assert torch.allclose(out[b], expect, atol=1e-6)
    assert torch.equal(schedules.rescale_cfg(x_cfg, x_cond, 0.0), x_cfg)


def test_node_ztsnr_sigmas_match_the_formula(comfy, tiny_files):
    import nodes
    from modelsmith.core.schedules import sd_alphas_cumprod, sigmas_from_alphas_cumprod, ztsnr_alphas_cumprod
    model, *_ = nodes.NODE_CLASS_MAPPINGS["ModelsmithCheckpointLoader"]().load("tiny_sdxl_vpred_ztsnr.safetensors", "auto")
    got = model.get_model_object("model_sampling").sigmas.double()
    expect = sigmas_from_alphas_cumprod(ztsnr_alphas_cumprod(sd_alphas_cumprod()))
    assert torch.allclose(got, expect, rtol=1e-6)


def test_resolution_helper():
    assert resolution.nearest_bucket(1.0) == (1024, 1024)
    assert resolution.nearest_bucket(2 / 3) == (832, 1216)
    assert resolution.nearest_bucket(16 / 9) == (1344, 768)
    assert resolution.nearest_bucket(0.42) == (640, 1536)
    w, h = resolution.nearest_size(3 / 4, 1.0, 16)
    assert w % 16 == 0 and h % 16 == 0 and abs(w * h / 2**20 - 1) < 0.05 and abs(w / h - 0.75) < 0.01
    assert resolution.nearest_size(1.0, 1.0, 64) == (1024, 1024)
    assert resolution.preset_size("2:3 (832x1216)", resolution.SDXL_PRESETS) == (832, 1216)
    assert resolution.preset_size("custom", resolution.SDXL_PRESETS, (500, 700)) == (500, 700)
    assert resolution.snap(1000, 700, 64) == (1024, 704)
    with pytest.raises(ValueError):
        resolution.nearest_size(0, 1)


def _cond(comfy, clip, text):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, text)[0]


def _node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]()


def _sdxl_node(model, pos, neg, settings=None, prediction="auto", cfg=0.0, **kw):
    args = dict(prediction=prediction, size="custom", width=64, height=64, steps=3, cfg=cfg, cfg_rescale="auto",
                rescale_phi=0.7, sampler_name="euler", scheduler="normal", seed=11, denoise=1.0)
    args.update(kw)
    out = _node("ModelsmithSDXLSampler").sample(model, pos, neg, settings=settings, **args)
    return out["result"][0]["samples"], out["ui"]["text"]


def _core(model, pos, neg, cfg, steps=3):
    latent = _node("EmptyLatentImage").generate(64, 64, 1)[0]
    return _node("KSampler").sample(model, 11, steps, cfg, "euler", "normal", pos, neg, latent, 1.0)[0]["samples"]


def test_auto_picks_vpred_ztsnr_and_equals_the_core_graph(comfy, tiny_files):
    loader = _node("ModelsmithCheckpointLoader")
    model, clip, vae, settings = loader.load("tiny_sdxl_vpred_ztsnr.safetensors", "auto")
    pos, neg = _cond(comfy, clip, "1girl"), _cond(comfy, clip, "worst quality")
    ours, text = _sdxl_node(model, pos, neg, settings)
    assert text[0].startswith("prediction v+ztsnr, cfg 4.5, rescale on")
    # core: plain model -> ModelSamplingDiscrete(v_prediction, zsnr) -> RescaleCFG(0.7) -> KSampler
    plain, *_ = loader.load("tiny_sdxl_vpred_ztsnr.safetensors", "eps")
    m = _node("ModelSamplingDiscrete").patch(plain, "v_prediction", True)[0]
    m = _node("RescaleCFG").patch(m, 0.7)[0]
    ref = _core(m, pos, neg, 4.5)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()


def test_eps_file_equals_plain_ksampler(comfy, tiny_files):
    model, clip, vae, settings = _node("ModelsmithCheckpointLoader").load("tiny_sdxl.safetensors", "auto")
    pos, neg = _cond(comfy, clip, "1girl"), _cond(comfy, clip, "")
    ours, text = _sdxl_node(model, pos, neg, settings)
    assert text[0].startswith("prediction eps, cfg 6, rescale off")
    assert torch.allclose(ours, _core(model, pos, neg, 6.0), atol=1e-5, rtol=0)


def test_auto_without_settings_reads_the_model(comfy, tiny_files):
    model, clip, _, _ = _node("ModelsmithCheckpointLoader").load("tiny_sdxl_vpred_ztsnr.safetensors", "auto")
    pos = _cond(comfy, clip, "x")
    _, text = _sdxl_node(model, pos, pos)
    assert text[0].startswith("prediction v+ztsnr")


def test_warnings_for_contradiction_and_high_cfg(comfy, tiny_files):
    model, clip, _, settings = _node("ModelsmithCheckpointLoader").load("tiny_sdxl_vpred_ztsnr.safetensors", "auto")
    pos = _cond(comfy, clip, "x")
    _, text = _sdxl_node(model, pos, pos, settings, prediction="eps")
    assert any("contradicts the model's own (v+ztsnr, from its markers)" in t for t in text)
    _, text = _sdxl_node(model, pos, pos, settings, cfg=12.0)
    assert any("far above" in t for t in text)


def test_sdxl_sampler_over_http_with_the_loader(server):
    g = {"1": {"class_type": "ModelsmithCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl_vpred_ztsnr.safetensors", "prediction": "auto"}},
         "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "1girl", "clip": ["1", 1]}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad", "clip": ["1", 1]}},
         "4": {"class_type": "ModelsmithSDXLSampler", "inputs": {
             "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "settings": ["1", 3], "vae": ["1", 2],
             "prediction": "auto", "size": "custom", "width": 64, "height": 64, "steps": 2, "cfg": 0.0,
             "cfg_rescale": "auto", "rescale_phi": 0.7, "sampler_name": "euler", "scheduler": "normal", "seed": 3,
             "denoise": 1.0}},
         "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "sdxl_sampler"}}}
    hist = server.queue_and_wait(g)
    assert hist["status"]["status_str"] == "success", hist["status"]
    assert hist["outputs"]["4"]["text"][0].startswith("prediction v+ztsnr")
    assert len(hist["outputs"]["5"]["images"]) == 1
