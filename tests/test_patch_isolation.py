"""The pack's patches stay on the clone they were made for (issue: a sampling schedule leaking
between runs). ComfyUI's cache hands the same MODEL object to every later run, so each test loads a
model once, samples it plainly with core's KSampler (the result a fresh process gives: the model was
just loaded), runs it through the pack's patching nodes, and samples it plainly again: the second
plain result must be bit-identical to the first. Runs on every runtime."""
import torch


def _node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]()


def _plain(model, pos, neg, size=64, steps=3, cfg=5.0, sampler="euler", scheduler="normal"):
    latent = _node("EmptyLatentImage").generate(size, size, 1)[0]
    return _node("KSampler").sample(model, 7, steps, cfg, sampler, scheduler, pos, neg, latent, 1.0)[0]["samples"]


def _sampling_state(model):
    ms = model.get_model_object("model_sampling")
    return type(ms), ms.sigmas.clone() if hasattr(ms, "sigmas") else None


def test_prediction_and_dtype_patches_do_not_leak_into_a_later_plain_run(comfy, tiny_files):
    model, clip = _node("ModelsmithCheckpointLoader").load("tiny_sdxl.safetensors", "auto")[:2]
    pos = _node("CLIPTextEncode").encode(clip, "1girl, solo")[0]
    neg = _node("CLIPTextEncode").encode(clip, "lowres")[0]
    state_before = _sampling_state(model)
    first = _plain(model, pos, neg)

    sdxl = _node("ModelsmithSDXLSampler")
    args = dict(size="custom", width=64, height=64, steps=3, cfg=4.5, cfg_rescale="on", rescale_phi=0.7,
                sampler_name="euler", scheduler="normal", seed=7, denoise=1.0)
    patched = sdxl.sample(model, pos, neg, prediction="v+ztsnr", **args)["result"][0]["samples"]
    assert not torch.equal(patched, first)  # the patch did act on the run it was made for
    dtype_node = _node("ModelsmithModelComputeDtype")
    for dtype in ("fp16", "bf16", "fp8_e4m3fn"):
        m = dtype_node.apply(model, dtype=dtype)["result"][0]
        _plain(m, pos, neg)
        sdxl.sample(m, pos, neg, prediction="v+ztsnr", **args)

    assert _sampling_state(model)[0] is state_before[0]
    assert torch.equal(_sampling_state(model)[1], state_before[1])
    again = _plain(model, pos, neg)
    assert torch.equal(again, first), "a plain core run after the pack's patched runs differs from the first"


def _hooks(model):
    dit = model.model.diffusion_model
    return sum(1 for m in dit.modules() for h in list(m._forward_pre_hooks.values()) + list(m._forward_hooks.values())
               if getattr(h, "_modelsmith", False))


def test_anima_fp16_hooks_and_quantized_copies_leave_the_loaded_model_alone(comfy, anima_files):
    """The Anima loader's model in fp16 (the pack's fp32-residual hooks, where they apply), sampled
    plainly, then through Model Compute Dtype bf16 / fp8 / nvfp4 copies (which reinstall hooks on
    their copy), then plainly again: identical, and the loaded model's hooks unchanged."""
    names = [anima_files[k].name for k in ("dit", "te", "vae")]
    model, clip, _, _ = _node("ModelsmithAnimaLoader").load(*names, dtype="fp16")
    pos = _node("CLIPTextEncode").encode(clip, "1girl")[0]
    neg = _node("CLIPTextEncode").encode(clip, "")[0]
    kw = dict(size=16, steps=2, cfg=4.0, sampler="euler", scheduler="simple")
    hooks = _hooks(model)
    before = _plain(model, pos, neg, **kw)
    node = _node("ModelsmithModelComputeDtype")
    for dtype in ("bf16", "fp8_e4m3fn", "nvfp4", "fp32"):
        _plain(node.apply(model, dtype=dtype)["result"][0], pos, neg, **kw)
    assert _hooks(model) == hooks
    assert torch.equal(_plain(model, pos, neg, **kw), before)
