"""Write tests/data/key_tables.json: the tensor names and shapes of one small model per registry
family (and variant), built from a ComfyUI runtime's own classes, for the header-only tests of the
fast tier (`make test-fast`), which run without any ComfyUI.

Run once per runtime change, in a runtime's environment:
    .venv-0.33/bin/python scripts/gen_key_tables.py
SD3.5 Large is built on the meta device at its real depth (38 joint blocks: the depth is what names
it); every other model is tiny."""
from __future__ import annotations

import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from comfy_env import comfy_version, import_comfy  # noqa: E402

import_comfy()
import torch  # noqa: E402

import family_models  # noqa: E402
import tiny  # noqa: E402
import tiny_anima  # noqa: E402
import tiny_dit  # noqa: E402

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def table(sd):
    return {k: [DTYPES[v.dtype], list(v.shape)] for k, v in sd.items()}


def saved_checkpoint(family, markers=()):
    """A tiny full checkpoint written by the runtime's own save path (denoiser, text encoders, VAE)."""
    from safetensors import safe_open
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        tiny.save(path, family, markers=markers)
        with safe_open(path, "pt") as f:
            return {k: [f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())] for k in f.keys()}


def sd35_large_meta():
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    import comfy.ops
    m = MMDiT(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=38, adm_in_channels=2048,
              context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}},
              pos_embed_max_size=192, num_patches=36864, qk_norm="rms", operations=comfy.ops.disable_weight_init,
              device="meta", dtype=torch.bfloat16)
    return {k: [DTYPES[v.dtype], list(v.shape)] for k, v in m.state_dict().items()}


def main():
    out = {"generated_from": "ComfyUI %d.%d.%d" % comfy_version(), "models": {}}
    models = out["models"]

    def add(name, family, variant, layout, prediction, t):
        models[name] = {"family": family, "variant": variant, "layout": layout, "prediction": prediction, "tensors": t}

    for fam in sorted(family_models.SPECS):
        add(fam, fam, None, "diffusion-model", "flow", table(family_models.state_dict(fam)))
    for name in ("flux1_schnell", "sd35_medium", "sd2_unet", "sdxl_refiner_unet"):
        build, fam, variant, layout, pred = tiny_dit.TINY_DIT[name]
        add(name, fam, variant, layout, pred, table(build()))
    models["flux1"]["variant"] = "dev"
    add("sd35_large", "sd3.5-large", None, "diffusion-model", "flow", sd35_large_meta())
    add("anima", "anima", "2-block", "diffusion-model", "flow", table(tiny_anima.dit_state_dict(blocks=2)))
    add("sd1", "sd1", None, "checkpoint", "eps", saved_checkpoint("sd1"))
    add("sdxl", "sdxl", None, "checkpoint", "eps", saved_checkpoint("sdxl"))
    add("sdxl_vpred_ztsnr", "sdxl", None, "checkpoint", "v", saved_checkpoint("sdxl", ("v_pred", "ztsnr")))
    path = os.path.join(ROOT, "tests", "data", "key_tables.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"wrote {path}: {len(models)} models, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
