"""The Anima equivalence reference: one set of random weights in upstream's layout (real key names and
widths, fewer blocks and text-encoder layers), and every stage of the pipeline computed from them by
either backend:

  native  ComfyUI 0.29's own Anima (model_base.Anima, its AnimaTokenizer / AnimaTEModel on its Qwen3
          code, built at 2 text-encoder layers through its SDClipModel), loaded by the pack at the
          file's depth;
  compat  Modelsmith's compat Anima (the DiT, adapter and text encoder the pack uses where the
          runtime has no Anima).

Stages: token ids and weights, text-encoder conditioning, adapter context, denoiser output (batch 2,
an odd size, fp32 and fp16), model sampling (sigmas, shift, multiplier) and a 3-step sampled latent.

Weights are filled per tensor name from a seed derived from that name, so both runtimes (whose
module orders may differ) build bit-identical weights. `python tests/anima_reference.py` in the 0.29
environment writes `tests/data/anima_reference.safetensors` from the native backend; on 0.29 the
test recomputes the native stages and checks them against that file too, so it cannot drift from
upstream unnoticed. Conditioning of long prompts is stored as 8 fixed projections per token plus
the token norms (the full tensors are compared directly, compat against native, on 0.29).
"""
from __future__ import annotations

import functools
import os
import sys
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "data", "anima_reference.safetensors")

PROMPTS = [
    "",                                                          # the common empty negative
    "masterpiece, best quality, 1girl, smile",
    "((smile:1.2), 1girl:1.1), (red hair:0.8), blue eyes",      # nested weights
    "\\(artist\\), (school uniform:1.3), \\(cosplay\\)",          # escaped parentheses
    ", ".join(f"tag{i} detail" for i in range(220)),             # past 512 T5 tokens
]
TE_LAYERS = 2
SAMPLE = dict(steps=3, cfg=4.0, sampler="euler", scheduler="simple", seed=7, size=(16, 16))


def fill_by_name(sd: dict, seed: int = 0) -> dict:
    out = {}
    for name in sorted(sd):
        t = sd[name]
        g = torch.Generator().manual_seed(seed * 1000003 + zlib.crc32(name.encode()))
        if not t.is_floating_point() or t.ndim == 0 or t.numel() == 0:
            out[name] = t.clone()
        elif name.endswith("bias"):
            out[name] = torch.randn(t.shape, generator=g) * 0.01
        elif t.ndim == 1:
            out[name] = 1.0 + torch.randn(t.shape, generator=g) * 0.01
        else:
            out[name] = torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5
    return out


def dit_state_dict() -> dict:
    import tiny_anima
    return fill_by_name(tiny_anima.dit_state_dict(blocks=3, adapter=tiny_anima.NATIVE_ADAPTER), seed=11)


def te_state_dict() -> dict:
    """Qwen3-0.6B's widths (hidden 1024, 16 heads / 8 KV heads of 128, MLP 3072, the full vocabulary) at 2 layers."""
    import comfy.ops
    from modelsmith.compat.qwen3 import Qwen3Small
    cfg = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": TE_LAYERS, "num_attention_heads": 16,
           "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}
    m = Qwen3Small(cfg, torch.float32, "meta", comfy.ops.disable_weight_init)
    return fill_by_name({k: torch.zeros(v.shape) for k, v in m.state_dict().items()}, seed=12)


def native_clip(te_sd):
    """Core's Anima text encoder (tokenizer, AnimaTEModel, Qwen3_06B) at the file's layer count."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.anima as core_anima
    import comfy.text_encoders.llama as llama

    class CoreAnimaTE(core_anima.AnimaTEModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            clip_model = functools.partial(
                comfy.sd1_clip.SDClipModel, layer="last", layer_idx=None,
                textmodel_json_config={"num_hidden_layers": TE_LAYERS}, special_tokens={"pad": 151643},
                layer_norm_hidden_state=False, model_class=llama.Qwen3_06B, enable_attention_masks=True,
                return_attention_masks=True)
            comfy.sd1_clip.SD1ClipModel.__init__(self, device=device, dtype=dtype, name="qwen3_06b",
                                                 clip_model=clip_model, model_options=model_options)

    target = comfy.supported_models_base.ClipTarget(core_anima.AnimaTokenizer, CoreAnimaTE)
    clip = comfy.sd.CLIP(target, parameters=sum(v.numel() for v in te_sd.values()))
    missing, unexpected = clip.load_sd({"qwen3_06b.transformer." + k: v for k, v in te_sd.items()}, full_model=True)
    assert not [k for k in missing if "lm_head" not in k and "logit_scale" not in k] and not unexpected, (missing, unexpected)
    return clip


def build(backend: str, dit_sd: dict, te_sd: dict, dtype=torch.float32):
    from modelsmith.compat import anima
    if backend == "native":
        return anima.load_native_anima(dict(dit_sd), dtype), native_clip(te_sd)
    from modelsmith.compat.qwen3 import load_text_encoder
    return anima.load_anima_model(dict(dit_sd), dtype), load_text_encoder(te_sd)


def _projection(dim=1024, k=8):
    return torch.randn(dim, k, generator=torch.Generator().manual_seed(99)) / dim ** 0.5


def stages(model, clip, full: bool = False) -> dict:
    """Every stage as named tensors (`full`: conditioning and context in full, for direct comparison)."""
    import comfy.model_management
    import comfy.samplers
    import nodes
    out, proj = {}, _projection()
    conds = []
    for i, p in enumerate(PROMPTS):
        tokens = clip.tokenize(p)
        out[f"tok.{i}.qwen"] = torch.tensor([t[0] for t in tokens["qwen3_06b"][0]], dtype=torch.int64)
        out[f"tok.{i}.t5"] = torch.tensor([t[0] for t in tokens["t5xxl"][0]], dtype=torch.int64)
        out[f"tok.{i}.t5w"] = torch.tensor([t[1] for t in tokens["t5xxl"][0]], dtype=torch.float32)
        cond = clip.encode_from_tokens_scheduled(tokens)
        conds.append(cond)
        c, extra = cond[0][0].float(), cond[0][1]
        ctx = context(model, c, extra)
        for name, v in (("cond", c), ("ctx", ctx.float())):
            if full:
                out[f"{name}.{i}"] = v[0].clone()
            out[f"{name}.{i}.proj"] = (v[0] @ proj).contiguous()
            out[f"{name}.{i}.norm"] = v[0].norm(dim=-1).contiguous()
    dit = model.model.diffusion_model
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([0.3, 0.8])
    ctx = torch.cat([context(model, conds[i][0][0].float(), conds[i][0][1]) for i in (1, 2)])
    for name, shape in (("den", (2, 16, 1, 8, 8)), ("den_odd", (2, 16, 1, 25, 31))):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            out[name] = dit(x, t, ctx).float().contiguous()
    ms = model.get_model_object("model_sampling")
    out["sigmas"] = comfy.samplers.calculate_sigmas(ms, "simple", 30).float()
    out["shift_multiplier"] = torch.tensor([float(ms.shift), float(ms.multiplier)])
    w, h = SAMPLE["size"]
    latent = {"samples": torch.zeros([1, 16, 1, h, w], device=comfy.model_management.intermediate_device())}
    (res,) = nodes.common_ksampler(model, SAMPLE["seed"], SAMPLE["steps"], SAMPLE["cfg"], SAMPLE["sampler"],
                                   SAMPLE["scheduler"], conds[1], conds[0], latent)
    out["sampled"] = res["samples"].float().contiguous()
    return out


def context(model, cond, extra):
    """The DiT's cross-attention context for one prompt: the adapter output, weighted, padded to 512."""
    dit = model.model.diffusion_model
    ids, w = extra["t5xxl_ids"].reshape(1, -1), extra["t5xxl_weights"].reshape(1, -1, 1).to(cond.dtype)
    with torch.no_grad():
        if hasattr(dit, "preprocess_text_embeds"):  # core's Anima
            return dit.preprocess_text_embeds(cond, ids, t5xxl_weights=w)
        from modelsmith.compat.anima import adapter_context
        return adapter_context(dit.llm_adapter, cond, ids, w)


def fp16_denoiser(model, pack_residual: bool) -> torch.Tensor:
    """The denoiser output with weights and compute in fp16 (CPU runs fp16 kernels); `pack_residual`:
    the compat DiT's fp32-residual hooks (core's Anima widens its stream itself)."""
    import copy
    dit = copy.deepcopy(model.model.diffusion_model).half()
    if pack_residual:
        from modelsmith.compat.fp16_residual import enable_fp32_residual
        enable_fp32_residual(dit, reinstall=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 1, 8, 8, generator=g)
    ctx = torch.randn(2, 512, 1024, generator=torch.Generator().manual_seed(6)) * 0.5
    with torch.no_grad():
        return dit(x.half(), torch.tensor([0.3, 0.8]).half(), ctx.half()).float()


def main():
    sys.path.insert(0, HERE)
    import asyncio
    import comfy_env
    folder_paths = comfy_env.import_comfy()
    folder_paths.add_model_folder_path("custom_nodes", str(comfy_env.pack_nodes_dir()))
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))  # the pack as `modelsmith`
    sys.path.append(HERE)
    import safetensors.torch
    from modelsmith.compat.anima import native_anima_available
    if not native_anima_available():
        sys.exit("the reference comes from ComfyUI's native Anima: run this in the 0.29 environment")
    dit_sd, te_sd = dit_state_dict(), te_state_dict()
    model, clip = build("native", dit_sd, te_sd)
    ref = stages(model, clip)
    ref["den16"] = fp16_denoiser(model, pack_residual=False)
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in ref.items()}, REFERENCE,
                                metadata={"source": "ComfyUI 0.29.0 native Anima (tests/anima_reference.py)"})
    print(f"wrote {REFERENCE}: {len(ref)} tensors")


if __name__ == "__main__":
    main()
