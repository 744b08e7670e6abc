"""Publish (issue 27, point 4): a folder ready to upload, as the seed guide says: the model in fp16,
EMA pruned, safetensors, v-pred/ZTSNR markers kept, ModelSpec metadata, an ASCII file name, and a
Hugging Face model card (YAML front matter + markdown); the upload command printed, never run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from modelsmith.core.convert import ema_key
from modelsmith.core.inspect import inspect_file


def _card(path):
    import yaml  # PyYAML comes with ComfyUI's requirements (the card tests run in a runtime)
    text = path.read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.fixture
def sd1_with_ema(tiny_files, tmp_path):
    sd = safetensors.torch.load_file(str(tiny_files["sd1"]))
    for k in list(sd):
        if k.startswith("model.diffusion_model."):
            sd[ema_key(k)] = sd[k] + 0.01
    sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(1000)
    path = tmp_path / "\u30e2\u30c7\u30eb sd1 ema.safetensors"  # a Japanese name with a space
    safetensors.torch.save_file(sd, str(path))
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "modelsmith", "publish", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_vpred_ztsnr_sdxl_becomes_an_fp16_folder_with_a_card(tiny_files, tmp_path):
    src = tiny_files["sdxl_vpred_ztsnr"]
    assert inspect_file(src)["precision"] == "fp32"
    out = tmp_path / "pub"
    r = _cli(src, out, "--title", "My NoobAI v-pred merge", "--license", "openrail++", "--repo", "me/noob-vpred")
    assert r.returncode == 0, r.stderr
    assert "upload (not run): hf upload me/noob-vpred" in r.stdout
    model = out / "My_NoobAI_v-pred_merge.safetensors"
    rep = inspect_file(model)
    assert (rep["precision"], rep["prediction"], rep["ztsnr"], rep["ema"]) == ("fp16", "v", True, False)
    with safe_open(str(model), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.title"] == "My NoobAI v-pred merge" and meta["modelspec.license"] == "openrail++"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base" and meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.resolution"] == "1024x1024" and len(meta["modelspec.hash_sha256"]) >= 64
    front, body = _card(out / "README.md")
    assert front["license"] == "openrail++" and front["pipeline_tag"] == "text-to-image"
    assert front["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert {"v-prediction", "zero-terminal-snr", "sdxl"} <= set(front["tags"])
    import hashlib
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert sha in body and "## v-prediction" in body and "| cfg | 4.5 |" in body
    # never overwrites: a second run into the same folder is one sentence and changes nothing
    before = model.read_bytes()
    again = _cli(src, out, "--title", "My NoobAI v-pred merge")
    assert again.returncode != 0 and "never overwrites" in again.stderr and model.read_bytes() == before


def test_sd1_with_ema_is_pruned_and_named_in_ascii(sd1_with_ema, tmp_path):
    assert inspect_file(sd1_with_ema)["ema"]
    out = tmp_path / "pub"
    r = _cli(sd1_with_ema, out)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert "README.md" in files and len(files) == 2
    model = out / next(f for f in files if f.endswith(".safetensors"))
    assert model.name.isascii() and " " not in model.name
    rep = inspect_file(model)
    assert (rep["family"], rep["precision"], rep["ema"], rep["prediction"]) == ("sd1", "fp16", False, "eps")
    front, body = _card(out / "README.md")
    assert front["license"] == "other" and front["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert "## v-prediction" not in body and "EMA pruned" in body and "| steps | 25 |" in body


def test_a_refused_pickle_writes_nothing(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    r = _cli(evil, tmp_path / "pub")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pub").exists() or not any((tmp_path / "pub").iterdir())


def test_the_node_writes_into_output_publish(comfy, tiny_files, output_dir, tmp_path):
    import shutil

    import folder_paths
    import nodes
    node = nodes.NODE_CLASS_MAPPINGS["ModelsmithPublish"]()
    ckpts = folder_paths.get_folder_paths("checkpoints")[0]
    name = "publish_node_test.safetensors"
    shutil.copy(tiny_files["sdxl_vpred_ztsnr"], f"{ckpts}/{name}")
    folder_paths.filename_list_cache.pop("checkpoints", None)
    out = node.publish(name, "Node Test", "other", "node-test")
    folder = out["result"][0]
    assert folder.startswith(str(output_dir)) and "hf upload" in out["ui"]["text"][0]
    assert json.loads(json.dumps(sorted(p.name for p in __import__("pathlib").Path(folder).iterdir()))) == \
        ["Node_Test.safetensors", "README.md"]
    with pytest.raises(Exception, match="plain folder name") as err:  # the pack's error, as ComfyUI loaded it
        node.publish(name, "", "other", "../escape")
    assert type(err.value).__name__ == "ModelsmithError"
