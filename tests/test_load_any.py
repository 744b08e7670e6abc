"""Load Model, Right Settings (issue 28, point 2): which text encoders, CLIP type and VAE the loader
takes for each family from a library of header-only files at full real size (what ComfyUI's official
templates load for that family), how it ranks several fitting files by device, overrides, and the one
sentence when a file is missing; then, on the real runtime, the node against core's own loaders."""
from __future__ import annotations

import pytest

from modelsmith.core import companions, doctor
from modelsmith.core.errors import ModelsmithError
from modelsmith.core.safetensors_io import write_sparse

import test_companions as tc

CPU = {"gpu": False}
BIG_GPU = {"gpu": True, "vram_gb": 24.0, "bf16": True}
SMALL_GPU = {"gpu": True, "vram_gb": 8.0, "bf16": False}

# family (variant) -> (text encoder files in order, core's CLIP `type`, VAE file): the official templates' picks
# (the library below holds one file of each kind, two Mistral encoders and three T5-XXL precisions)
EXPECTED = {
    ("sd1", None): (["clip_l.safetensors"], "stable_diffusion", "sdxl_vae.safetensors"),
    ("sd2", None): (["open_clip_h.safetensors"], "stable_diffusion", "sdxl_vae.safetensors"),
    ("sdxl", None): (["clip_l.safetensors", "clip_g.safetensors"], "sdxl", "sdxl_vae.safetensors"),
    ("sdxl-refiner", None): (["clip_g.safetensors"], "stable_diffusion", "sdxl_vae.safetensors"),
    ("sd3", None): (["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"], "sd3", "ae.safetensors"),
    ("sd3.5-medium", None): (["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"], "sd3", "ae.safetensors"),
    ("sd3.5-large", None): (["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"], "sd3", "ae.safetensors"),
    ("flux1", None): (["clip_l.safetensors", "t5xxl_fp16.safetensors"], "flux", "ae.safetensors"),
    ("flux1", "schnell"): (["clip_l.safetensors", "t5xxl_fp16.safetensors"], "flux", "ae.safetensors"),
    ("flux2", None): (["mistral_3_small_flux2_bf16.safetensors"], "flux2", "flux2-vae.safetensors"),
    ("flux2", "klein-4b"): (["qwen_3_4b.safetensors"], "flux2", "flux2-vae.safetensors"),
    ("qwen-image", None): (["qwen_2.5_vl_7b_fp8_scaled.safetensors"], "qwen_image", "qwen_image_vae.safetensors"),
    ("z-image", None): (["qwen_3_4b.safetensors"], "lumina2", "ae.safetensors"),
    ("lumina2", None): (["gemma_2_2b_fp16.safetensors"], "lumina2", "ae.safetensors"),
    ("anima", None): (["qwen_3_06b_base.safetensors"], "stable_diffusion", "qwen_image_vae.safetensors"),
    ("cosmos-predict2", None): (["oldt5_xxl_fp8_e4m3fn_scaled.safetensors"], "cosmos", "qwen_image_vae.safetensors"),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    for sub in ("text_encoders", "vae"):
        (root / sub).mkdir()
    for name, (table, _, _) in tc.TEXT_ENCODERS.items():
        write_sparse(root / "text_encoders" / name, table)
    for name, (table, _, _) in tc.VAES.items():
        write_sparse(root / "vae" / name, table)
    return doctor.scan({k: [str(root / k)] for k in ("text_encoders", "vae")})


@pytest.mark.parametrize("family,variant", sorted(EXPECTED, key=str))
def test_each_family_gets_its_templates_files(library, family, variant):
    files, clip_type, vae = EXPECTED[(family, variant)]
    plan = companions.plan(family, variant, {"denoiser": True}, library, CPU)
    assert [t["name"] for t in plan["text_encoders"]] == files
    assert (plan["clip_type"], plan["vae"]["name"], plan["missing"]) == (clip_type, vae, [])
    assert all(any(t["name"] in n for n in plan["notes"]) for t in plan["text_encoders"])


def test_every_family_of_the_registry_is_covered():
    from modelsmith.core import registry
    assert {f.id for f in registry.FAMILIES} == {f for f, _ in EXPECTED}


def test_the_precision_that_suits_the_device(library):
    def t5(device):
        return companions.plan("flux1", None, {"denoiser": True}, library, device)["text_encoders"][1]["name"]
    assert t5(CPU) == "t5xxl_fp16.safetensors"          # a CPU computes in fp32: the highest precision there is
    assert t5(BIG_GPU) == "t5xxl_fp16.safetensors"      # 24 GB: the 16-bit file
    assert t5(SMALL_GPU) == "t5xxl_fp8_e4m3fn_scaled.safetensors"  # 8 GB: scaled fp8 before plain fp8
    notes = companions.plan("flux1", None, {"denoiser": True}, library, CPU)["notes"]
    assert any("of 3, the precision that suits this device best" in n for n in notes), notes


def test_a_checkpoint_keeps_its_own_text_encoders_and_vae(library):
    plan = companions.plan("sdxl", None, {"denoiser": True, "text_encoders": ["clip-l", "clip-g"], "vae": True},
                           library, CPU)
    assert (plan["text_encoders"], plan["vae"]) == ([], None)
    no_vae = companions.plan("sdxl", None, {"denoiser": True, "text_encoders": ["clip-l", "clip-g"]}, library, CPU)
    assert no_vae["vae"]["name"] == "sdxl_vae.safetensors"
    assert "share one header" in no_vae["notes"][-1] or len(no_vae["notes"]) == 1


def test_overrides_are_checked_against_the_slot(library):
    with pytest.raises(ModelsmithError, match="is CLIP-G .* FLUX.1 reads T5-XXL v1.1 encoder there"):
        companions.plan("flux1", None, {"denoiser": True}, library, CPU, {"text_encoder_2": "clip_g.safetensors"})
    with pytest.raises(ModelsmithError, match="16-channel image VAE .* Qwen-Image decodes with"):
        companions.plan("qwen-image", None, {"denoiser": True}, library, CPU, {"vae": "ae.safetensors"})
    fp8 = companions.plan("flux1", None, {"denoiser": True}, library, CPU,
                          {"text_encoder_2": "t5xxl_fp8_e4m3fn.safetensors"})
    assert fp8["text_encoders"][1] == {"slot": "text_encoder_2", "id": "t5xxl", "name": "t5xxl_fp8_e4m3fn.safetensors",
                                       "precision": "fp8_e4m3fn"}
    no_t5 = companions.plan("sd3", None, {"denoiser": True}, library, CPU, {"text_encoder_3": "none"})
    assert [t["id"] for t in no_t5["text_encoders"]] == ["clip-l", "clip-g"]


def test_missing_files_are_one_sentence_naming_them_and_the_folder(library):
    plan = companions.plan("flux2", "klein-9b", {"denoiser": True}, library, CPU)
    assert plan["missing"] == ["Qwen3-8B, e.g. qwen_3_8b_fp8mixed.safetensors, in models/text_encoders"]
    empty = companions.plan("flux1", None, {"denoiser": True}, [], CPU)
    sentence = companions.missing_sentence("flux1-dev.safetensors", "FLUX.1", empty["missing"])
    assert sentence.count(".") >= 1 and sentence.endswith("refresh the node list.")
    for part in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "models/text_encoders", "ae.safetensors (FLUX VAE) in models/vae"):
        assert part in sentence, sentence


# --- on the real runtime: the node against core's loaders ------------------------------------------

def _full_clip_l(seed=5):
    """A CLIP-L text model at its real size (123 M parameters, random): core's CLIP loader builds CLIP-L at
    its published size, so a smaller one would not load there."""
    import torch
    import comfy.sd1_clip
    import tiny
    m = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    tiny.randomize(m.transformer, seed)
    return {k: v.detach().to(torch.float16).contiguous() for k, v in m.transformer.state_dict().items()
            if not k.endswith("position_ids")}


def _full_image_vae(z=16, seed=6):
    """The SD3 / FLUX.1 VAE at its real size (84 M parameters, random): core builds it at that size."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    import tiny
    dd = {"double_z": True, "z_channels": z, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    ae = AutoencoderKL(ddconfig=dd, embed_dim=z)
    tiny.randomize(ae, seed)
    return {k: v.detach().to(torch.float16).contiguous() for k, v in ae.state_dict().items()}


@pytest.mark.runtime
def test_the_node_equals_core_loaders_on_sd3(comfy, models_dir):
    """A tiny SD3 DiT (core's own detection reads its sizes), a real-size CLIP-L and SD3 VAE: the node's
    MODEL, CLIP and VAE give the same sampled latent, conditioning and decoded image as core's UNETLoader,
    CLIPLoader (type sd3) and VAELoader on the same files."""
    import safetensors.torch
    import torch
    import family_models
    import nodes
    from modelsmith.nodes.loaders import ModelsmithLoadAny
    sub = "load_any"
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (models_dir / folder / sub).mkdir(exist_ok=True)
    safetensors.torch.save_file(family_models.state_dict("sd3", seed=7), str(models_dir / "diffusion_models" / sub / "sd3-tiny.safetensors"))
    safetensors.torch.save_file(_full_clip_l(), str(models_dir / "text_encoders" / sub / "clip_l.safetensors"))
    safetensors.torch.save_file(_full_image_vae(), str(models_dir / "vae" / sub / "sd3_vae.safetensors"))
    te, vae_name = f"{sub}/clip_l.safetensors", f"{sub}/sd3_vae.safetensors"

    model, clip, vae, settings = ModelsmithLoadAny().load(f"diffusion_models/{sub}/sd3-tiny.safetensors",
                                                          text_encoder_2="none", text_encoder_3="none")
    assert settings["files"] == {"text_encoders": [te], "vae": vae_name, "clip_type": "sd3"}, settings["files"]
    assert settings["family"].startswith("sd3") and "text encoders as 'sd3'" in settings["report"]

    core_model = nodes.UNETLoader().load_unet(f"{sub}/sd3-tiny.safetensors", "default")[0]
    core_clip = nodes.CLIPLoader().load_clip(te, type="sd3")[0]
    core_vae = nodes.VAELoader().load_vae(vae_name)[0]

    def cond(c):
        out = c.encode_from_tokens(c.tokenize("a cat in a hat"), return_pooled=True)
        return out[0], out[1]
    (c1, p1), (c2, p2) = cond(clip), cond(core_clip)
    assert c1.abs().sum() > 0 and torch.equal(c1, c2) and torch.equal(p1, p2)
    assert torch.equal(family_models.sample(model, "sd3"), family_models.sample(core_model, "sd3"))
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vae.decode(latent), core_vae.decode(latent))


@pytest.mark.runtime
def test_the_node_hands_anima_to_its_own_loader(comfy, models_dir, anima_files):
    """Anima's separate files: the node picks its 1024-wide Qwen3 by header (the 64-wide tiny one beside
    it is not a Qwen3-0.6B) and loads through the Anima loader, with the same result as that loader."""
    import safetensors.torch
    import torch
    import tiny_anima
    from modelsmith.nodes.anima import ModelsmithAnimaLoader
    from modelsmith.nodes.loaders import ModelsmithLoadAny
    for folder in ("diffusion_models", "text_encoders"):
        (models_dir / folder / "load_any").mkdir(exist_ok=True)
    dit = models_dir / "diffusion_models" / "load_any" / "anima-wide.safetensors"
    safetensors.torch.save_file(tiny_anima.dit_state_dict(seed=8, blocks=2, adapter=tiny_anima.NATIVE_ADAPTER,
                                                          dtype=torch.bfloat16), str(dit))
    safetensors.torch.save_file(tiny_anima.te_state_dict(seed=9, hidden=1024, dtype=torch.bfloat16),
                                str(models_dir / "text_encoders" / "load_any" / "qwen3_wide.safetensors"))
    model, clip, vae, settings = ModelsmithLoadAny().load("diffusion_models/load_any/anima-wide.safetensors")
    assert settings["family"] == "anima" and "load_any/qwen3_wide.safetensors (Qwen3-0.6B" in settings["report"]
    ref = ModelsmithAnimaLoader().load("load_any/anima-wide.safetensors", "load_any/qwen3_wide.safetensors",
                                       anima_files["vae"].name)
    assert torch.equal(clip.encode_from_tokens(clip.tokenize("1girl, solo")),
                       ref[1].encode_from_tokens(ref[1].tokenize("1girl, solo")))
    a, b = model.model.diffusion_model.state_dict(), ref[0].model.diffusion_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.runtime
def test_a_missing_text_encoder_stops_the_node_before_loading(comfy, models_dir):
    """A FLUX.1 file (header only, full size) without its T5 in the folders: one sentence, nothing loaded."""
    import json
    from pathlib import Path
    from modelsmith.nodes.loaders import ModelsmithLoadAny
    keys = json.loads((Path(__file__).parent / "data" / "key_tables.json").read_text())["models"]
    (models_dir / "diffusion_models" / "load_any").mkdir(exist_ok=True)
    write_sparse(models_dir / "diffusion_models" / "load_any" / "flux1-dev.safetensors",
                 {k: tuple(v) for k, v in keys["flux1"]["tensors"].items()})
    with pytest.raises(ModelsmithError) as e:
        ModelsmithLoadAny().load("diffusion_models/load_any/flux1-dev.safetensors")
    msg = str(e.value)
    assert msg.startswith("flux1-dev.safetensors is FLUX.1, which needs files") and "t5xxl_fp16.safetensors" in msg


@pytest.mark.runtime
def test_a_checkpoint_without_its_vae_gets_one_from_the_library(comfy, models_dir):
    """A tiny SD1 checkpoint saved without a VAE: the node keeps the checkpoint's own text encoder, finds
    the 4-channel VAE in models/vae by its header, and that VAE decodes as core's VAELoader's does."""
    import safetensors.torch
    import torch
    import nodes
    import tiny
    from modelsmith.nodes.loaders import ModelsmithLoadAny
    (models_dir / "vae" / "load_any").mkdir(exist_ok=True)
    tiny.save(models_dir / "checkpoints" / "tiny_sd1_novae.safetensors", "sd1", seed=4, drop_vae=True)
    safetensors.torch.save_file(_full_image_vae(z=4, seed=8), str(models_dir / "vae" / "load_any" / "sd_vae.safetensors"))
    model, clip, vae, settings = ModelsmithLoadAny().load("checkpoints/tiny_sd1_novae.safetensors")
    assert settings["files"] == {"text_encoders": [], "vae": "load_any/sd_vae.safetensors", "clip_type": "stable_diffusion"}
    assert clip is not None and "vae: load_any/sd_vae.safetensors (SD VAE" in settings["report"], settings["report"]
    core_vae = nodes.VAELoader().load_vae("load_any/sd_vae.safetensors")[0]
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(vae.decode(latent), core_vae.decode(latent))
