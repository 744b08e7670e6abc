"""Bounded everywhere else (issue: untrusted files never cost the server): fetched outputs written
through the pack's writer, LoRA alphas/ranks/shapes checked, merge recipes without NaN/inf or DARE
drop 1, JSON bodies bounded in depth, TorchScript and torch-tar files named for what they are."""
import io
import json
import os
import tarfile
import zipfile

import pytest
import torch

from modelsmith.core.errors import ModelsmithError
from modelsmith.core.merge import Recipe
from modelsmith.tools.queue import _save_fetched


@pytest.mark.parametrize("name", ["..", ".", "", None, 5, "a/b.png", "../x.png", "x\0.png", "..\\\\evil.png"])
def test_fetched_outputs_need_a_plain_name(tmp_path, name):
    with pytest.raises(ModelsmithError, match="not a plain file name"):
        _save_fetched(str(tmp_path), name, b"data")
    assert list(tmp_path.iterdir()) == []


def test_fetched_outputs_never_clobber_or_follow_a_link(tmp_path):
    (tmp_path / "img.png").write_bytes(b"mine")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"untouched")
    (tmp_path / "img-1.png").symlink_to(victim)
    got = _save_fetched(str(tmp_path), "img.png", b"fetched")
    assert os.path.basename(got) == "img-2.png" and (tmp_path / "img-2.png").read_bytes() == b"fetched"
    assert (tmp_path / "img.png").read_bytes() == b"mine" and victim.read_bytes() == b"untouched"


@pytest.mark.parametrize("field, value, why", [("alpha", float("nan"), "finite"), ("alpha", float("inf"), "finite"),
                                               ("drop", 1.0, "below 1"), ("density", 0.0, "above 0"),
                                               ("blocks", {"IN00": float("nan")}, "finite")])
def test_merge_recipes_refuse_numbers_that_poison_the_merge(field, value, why):
    r = Recipe(method="dare" if field == "drop" else "weighted_sum",
               inputs=["a", "b", "c"] if field == "drop" else ["a", "b"], **{field: value})
    with pytest.raises(ModelsmithError, match=why):
        r.validate()
    text = r.to_json()  # NaN written by json.dumps comes back as NaN: refused on replay too
    with pytest.raises(ModelsmithError, match=why):
        Recipe.from_json(text).validate()


def test_a_deep_recipe_is_one_sentence():
    with pytest.raises(ModelsmithError, match="nested deeper"):
        Recipe.from_json("[" * 100000 + "]" * 100000)


def test_torchscript_and_torch_tar_files_are_named_for_what_they_are(tmp_path):
    from modelsmith.core.inspect import inspect_file
    ts = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), ts)
    with pytest.raises(ModelsmithError, match="a TorchScript program") as e:
        inspect_file(ts)
    assert "weights_only" not in str(e.value) and "Traceback" not in str(e.value)
    old = tmp_path / "old.pt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for member in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(member)
            info.size = 4
            t.addfile(info, io.BytesIO(b"\x80\x02N."))
    old.write_bytes(buf.getvalue())
    with pytest.raises(ModelsmithError, match="torch tar archive"):
        inspect_file(old)


def test_a_100k_deep_json_body_is_400_not_500(server):
    import urllib.error
    import urllib.request
    body = ("[" * 100000 + "]" * 100000).encode()
    req = urllib.request.Request(server.url + "/modelsmith/doctor/fix", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    assert "devices" in server.get("/system_stats")


def _lora_model():
    import tiny_anima
    from modelsmith.compat.anima import load_anima_model
    return load_anima_model(tiny_anima.dit_state_dict(seed=21, blocks=3), torch.float32)


@pytest.mark.parametrize("case, why", [
    ("nan_alpha", "finite, non-zero"), ("inf_alpha", "finite, non-zero"), ("zero_alpha", "finite, non-zero"),
    ("vector_alpha", "an alpha is one number"), ("rank_zero", "rank 0"), ("rank_mismatch", "disagree on the rank")])
def test_checked_lora_refuses_bad_alphas_and_ranks(comfy, models_dir, case, why):
    import safetensors.torch
    import nodes
    p = "lora_unet_blocks_0_self_attn_q_proj"
    sd = {p + ".lora_down.weight": torch.randn(4, 64), p + ".lora_up.weight": torch.randn(64, 4),
          p + ".alpha": torch.tensor(2.0)}
    if case.endswith("_alpha"):
        sd[p + ".alpha"] = {"nan_alpha": torch.tensor(float("nan")), "inf_alpha": torch.tensor(float("inf")),
                            "zero_alpha": torch.tensor(0.0), "vector_alpha": torch.ones(3)}[case]
    elif case == "rank_zero":
        sd[p + ".lora_down.weight"], sd[p + ".lora_up.weight"] = torch.zeros(0, 64), torch.zeros(64, 0)
    else:
        sd[p + ".lora_up.weight"] = torch.randn(64, 3)
    name = f"bad_{case}.safetensors"
    safetensors.torch.save_file(sd, str(models_dir / "loras" / name))
    import folder_paths
    folder_paths.filename_list_cache.pop("loras", None)
    with pytest.raises(Exception, match=why) as e:
        nodes.NODE_CLASS_MAPPINGS["ModelsmithLoraLoader"]().load(_lora_model(), name, 1.0)
    assert type(e.value).__name__ == "ModelsmithError"


def test_checked_lora_names_the_layers_core_would_drop(comfy, models_dir):
    import safetensors.torch
    import nodes
    import folder_paths
    ok, wrong = "lora_unet_blocks_0_self_attn_q_proj", "lora_unet_blocks_1_self_attn_q_proj"
    sd = {ok + ".lora_down.weight": torch.randn(4, 64) * 0.1, ok + ".lora_up.weight": torch.randn(64, 4) * 0.1,
          wrong + ".lora_down.weight": torch.randn(4, 128) * 0.1, wrong + ".lora_up.weight": torch.randn(64, 4) * 0.1}
    safetensors.torch.save_file(sd, str(models_dir / "loras" / "half_fits.safetensors"))
    folder_paths.filename_list_cache.pop("loras", None)
    out = nodes.NODE_CLASS_MAPPINGS["ModelsmithLoraLoader"]().load(_lora_model(), "half_fits.safetensors", 1.0)
    text = out["ui"]["text"][0]
    assert "1 layers do not fit this model's weights and ComfyUI drops them" in text
    assert "lora_unet_blocks_1_self_attn_q_proj (64x128 for a 64x64 weight)" in text
