"""Model Doctor fixes never lose a file: another file of the target name is never replaced, the file
is re-checked (same device/inode/size/mtime, inside its folder, no link in its path) when the fix
reads it, an original that changed while the fix ran is kept, renames keep the extension and a name,
and hashing a pipe is refused at once."""
import os
import threading
import time

import pytest
import torch

from modelsmith.core import doctor
from modelsmith.core.errors import ModelsmithError
from modelsmith.core.files import safe_filename
from modelsmith.core.safetensors_io import write_sparse


def _ckpt(path):
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(320, 4, 3, 3),
                               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                                   torch.randn(320, 768)}}, path)


def _scan(models):
    return {e["id"]: e for e in doctor.scan({"checkpoints": [str(models / "checkpoints")]})}


@pytest.fixture()
def models(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    return tmp_path / "models"


def test_replace_never_clobbers_another_file_of_the_target_name(models):
    ck = models / "checkpoints"
    _ckpt(ck / "m.ckpt")
    (ck / "m.safetensors").write_bytes(b"the user's own file")
    res = doctor.apply_fix(_scan(models)["checkpoints/m.ckpt"], "convert", replace=True)
    assert (ck / "m.safetensors").read_bytes() == b"the user's own file"
    assert (ck / "m.ckpt").exists() and os.path.exists(res["output"]) and "exists already" in res["note"]


def test_a_file_swapped_after_the_scan_is_not_read(models):
    ck = models / "checkpoints"
    _ckpt(ck / "m.ckpt")
    entry = _scan(models)["checkpoints/m.ckpt"]
    os.replace(ck / "m.ckpt", ck / "old.bin")
    _ckpt(ck / "m.ckpt")  # another file under the scanned name
    before = set(os.listdir(ck))
    with pytest.raises(ModelsmithError, match="changed since the scan"):
        doctor.apply_fix(entry, "convert")
    assert set(os.listdir(ck)) == before


def test_a_link_in_the_path_is_refused(models, tmp_path):
    ck = models / "checkpoints"
    real = ck / "real_sub"
    real.mkdir()
    _ckpt(real / "m.ckpt")
    (ck / "via_link").symlink_to(real, target_is_directory=True)
    entries = _scan(models)
    entry = dict(entries["checkpoints/real_sub/m.ckpt"])
    # the same file, addressed through the link (what a swap of a folder for a link looks like)
    entry["path"] = str(ck / "via_link" / "m.ckpt")
    with pytest.raises(ModelsmithError, match="a link is in its path"):
        doctor.apply_fix(entry, "convert")


def test_a_newer_file_that_arrives_while_a_replace_fix_runs_is_kept(models):
    ck = models / "checkpoints"
    _ckpt(ck / "m.ckpt")
    write_sparse(ck / "v.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),
                                        "model.diffusion_model.label_emb.0.0.weight": ("F16", (1280, 2816)),
                                        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight":
                                            ("F16", (640, 2048))},
                 metadata={"modelspec.prediction_type": "v"})
    entry = _scan(models)["checkpoints/v.safetensors"]
    newer = b"a newer file the user saved meanwhile"

    def progress(done, total):
        if done == 1:
            tmp = ck / "incoming.tmp"
            tmp.write_bytes(newer)
            os.replace(tmp, ck / "v.safetensors")
    res = doctor.apply_fix(entry, "markers", replace=True, progress=progress)
    assert (ck / "v.safetensors").read_bytes() == newer
    assert res["output"] != str(ck / "v.safetensors") and os.path.exists(res["output"])
    assert "newer file was kept" in res["note"]


@pytest.mark.parametrize("name, expect", [
    ("\u65e5\u672c.safetensors", r"model-[0-9a-f]{8}\.safetensors"), ("my model.ckpt", r"my_model\.ckpt"),
    ("\uff4d\uff4f\uff44\uff45\uff4c\u3000\uff56\uff12.safetensors", r"model_v2\.safetensors"), (".safetensors", r"safetensors"),
    ("\u65e5\u672c.\u30bb\u30fc\u30d5", r"model-[0-9a-f]{8}")])
def test_safe_names_keep_the_extension_and_are_never_empty(name, expect):
    import re
    got = safe_filename(name)
    assert re.fullmatch(expect, got), got
    assert safe_filename("\u65e5\u672c.safetensors") != safe_filename("\u4e2d\u56fd.safetensors")


def test_rename_fix_of_a_non_ascii_name(models):
    ck = models / "checkpoints"
    _ckpt(ck / "\u65e5\u672c.ckpt")
    res = doctor.apply_fix(_scan(models)["checkpoints/\u65e5\u672c.ckpt"], "rename")
    assert os.path.basename(res["output"]).startswith("model-") and res["output"].endswith(".ckpt")
    assert not (ck / "\u65e5\u672c.ckpt").exists()


def test_hashing_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    out = {}

    def run():
        try:
            doctor.sha256_file(str(fifo))
        except ModelsmithError as e:
            out["error"] = str(e)
    t = threading.Thread(target=run, daemon=True)
    start = time.time()
    t.start()
    t.join(10)
    assert not t.is_alive() and time.time() - start < 5
    assert "not a regular file" in out["error"]
