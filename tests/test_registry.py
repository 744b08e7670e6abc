"""The family registry (core/registry.py): every family of the seed guide has one record, and every
tool reaches it. Header-only: the key tables are data (tests/data/key_tables.json, written from a
runtime's own classes by scripts/gen_key_tables.py), so these run without any ComfyUI."""
from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

from modelsmith.core import blocks as blk
from modelsmith.core import registry
from modelsmith.core.inspect import inspect_file
from modelsmith.core.quantize import preset_for
from modelsmith.core.safetensors_io import write_sparse

ROOT = Path(__file__).resolve().parent.parent
TABLES = json.loads((Path(__file__).parent / "data" / "key_tables.json").read_text())["models"]
# the seed guide's families (model-guide.ja.txt): SD1, SD2 (768-v), SDXL (base, refiner, v-pred +
# ZTSNR), SD3 / SD3.5 Medium and Large, FLUX.1, FLUX.2, Qwen-Image, Z-Image, Lumina 2, Cosmos, Anima
GUIDE = {"sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "sd3.5-medium", "sd3.5-large", "flux1", "flux2", "qwen-image",
         "z-image", "lumina2", "cosmos-predict2", "anima"}
SETTING_KEYS = {"width", "height", "steps", "cfg", "sampler", "scheduler"}


def _file(tmp_path, name):
    t = TABLES[name]["tensors"]
    p = tmp_path / f"{name}.safetensors"
    write_sparse(p, {k: (d, s) for k, (d, s) in t.items()})
    return p


def test_every_family_of_the_guide_has_one_record():
    assert set(registry.IDS) == GUIDE
    assert len(registry.FAMILIES) == len(registry.IDS)  # one record per id


def test_the_key_tables_cover_every_family():
    assert {m["family"] for m in TABLES.values()} == GUIDE


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_family_is_reachable_from_every_tool(tmp_path, name):
    """Inspection names it (from a header written from the runtime's own key names), and its record
    gives recommended settings, a quantize preset with live patterns, merge blocks counted from the
    file, companions, a ModelSpec id and a config class; the Model Doctor lists it."""
    want = TABLES[name]
    path = _file(tmp_path, name)
    rep = inspect_file(path)
    assert (rep["family"], rep["layout"], rep["prediction"]) == (want["family"], want["layout"], want["prediction"])
    if want["variant"] and not want["variant"].endswith("block"):
        assert rep["variant"] == want["variant"]
    fam = rep["family"]
    rec = registry.get(fam)
    assert SETTING_KEYS <= set(rep["recommended"]) and rep["recommended"] == registry.settings(fam, rep["variant"], rep["prediction"])
    assert preset_for(fam) == fam and fam in registry.quantize_presets()
    keys = list(want["tensors"])
    stems = [blk._strip(k) for k in keys]
    for pattern in rec.keep_high:
        assert any(re.search(pattern, k) for k in stems), f"{fam}: keep pattern {pattern} names no layer"
    assert any(k in stems for k in rec.signature), f"{fam}: none of its signature keys is in the file"
    names = blk.block_names(fam, keys)
    assert len(names) > 3 and len(set(names)) == len(names)
    assert {blk.block_of(k, fam) for k in keys} - {"BASE"} <= set(names)
    assert rec.text_encoders and rec.vae and rec.modelspec and rec.config_classes and rec.size_multiple in (16, 64)
    from modelsmith.core.doctor import scan
    models = tmp_path / "models"
    folder = models / ("checkpoints" if want["layout"] == "checkpoint" else "diffusion_models")
    folder.mkdir(parents=True)
    path.rename(folder / path.name)
    entries = scan({folder.name: [str(folder)]})
    assert [e["summary"]["family"] for e in entries] == [fam]


def test_variants_take_their_settings_and_modelspec_ids(tmp_path):
    v = inspect_file(_file(tmp_path, "sdxl_vpred_ztsnr"))
    assert (v["prediction"], v["ztsnr"]) == ("v", True)
    assert v["recommended"]["cfg"] == 4.5 and v["recommended"]["cfg_rescale"] == 0.7
    assert inspect_file(_file(tmp_path, "flux1_schnell"))["recommended"]["steps"] == 4
    assert "guidance" not in inspect_file(_file(tmp_path, "flux1_schnell"))["recommended"]
    assert registry.modelspec_architecture("flux1", "schnell") == "flux-1-schnell"
    assert registry.modelspec_architecture("sd2", None, "v") == "stable-diffusion-v2-768-v"
    assert registry.from_modelspec("stable-diffusion-v2-768-v") == "sd2"
    assert registry.settings("sd2", None, "v")["width"] == 768


def test_one_runtime_mapping_for_every_family():
    """Each record's config classes map back to it (SD3 and SD3.5 by their unet_config), subclasses
    through their base classes; a class no record names is unknown."""
    for f in registry.FAMILIES:
        for cls in f.config_classes:
            cfg = dict(f.config_match)
            assert registry.for_config([cls, "BASE"], cfg) == f.id, (f.id, cls)
    assert registry.for_config(["SSD1B", "SDXL", "BASE"]) == "sdxl"
    assert registry.for_config(["SD21UnclipL", "SD20", "BASE"]) == "sd2"
    assert registry.for_config(["SDXLRefiner", "SDXL", "BASE"]) == "sdxl-refiner"
    assert registry.for_config(["WAN21_T2V", "BASE"]) is None


_IDS = set(registry.IDS)


def _family_literals(node) -> int:
    return sum(1 for e in getattr(node, "elts", []) + getattr(node, "keys", [])
               if isinstance(e, ast.Constant) and e.value in _IDS)


def test_no_module_but_the_registry_holds_a_family_table():
    """No tuple, list, set or dict literal naming two or more family ids outside core/registry.py:
    what a family is stays in its record (the issue found 13 such tables that disagreed)."""
    offenders = []
    for sub in ("core", "compat", "nodes", "kernels", "cli", "tools"):
        for path in sorted((ROOT / sub).glob("*.py")):
            if path.name == "registry.py" and sub == "core":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and _family_literals(node) >= 2:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_core_anima_facts_live_in_the_anima_record():
    from modelsmith.core.families import CORE_ANIMA
    assert CORE_ANIMA is registry.get("anima").core_native
    assert set(CORE_ANIMA["adapter"]) == {"dim", "source_dim", "layers", "heads"}
    text = (ROOT / "compat" / "anima.py").read_text()
    assert "dim=1024" not in text and "layers=6" not in text  # the pack's adapter class holds no copy


def test_latent_and_vae_facts():
    assert registry.get("flux2").vae_signature == (32, 4) and registry.get("anima").vae_signature == (16, 5)
    assert all(f.size_multiple == (64 if f.blocks.unet_levels else 16) for f in registry.FAMILIES)
    assert os.path.basename(registry.__file__) == "registry.py"


def test_block_weights_by_core_names_in_the_cli_and_recipes(tmp_path):
    """`merge --blocks` takes a FLUX file's own block names (core's merge-node names), the recipe
    records them and replays; a name the file does not have is one sentence listing the real ones."""
    import subprocess
    import sys
    a, b = _file(tmp_path, "flux1"), tmp_path / "b.safetensors"
    b.write_bytes(a.read_bytes())
    out = tmp_path / "o.safetensors"
    ok = subprocess.run([sys.executable, "-m", "modelsmith", "merge", str(a), str(b), str(out),
                         "--blocks", "img_in:0.3,double_blocks.1:0.7,final_layer:1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    recipe = json.loads((tmp_path / "o.safetensors.recipe.json").read_text())
    assert recipe["blocks"] == {"img_in": 0.3, "double_blocks.1": 0.7, "final_layer": 1.0}
    bad = subprocess.run([sys.executable, "-m", "modelsmith", "merge", str(a), str(b), str(tmp_path / "p.safetensors"),
                          "--blocks", "double_blocks.9:0.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown block 'double_blocks.9'" in bad.stderr and "single_blocks.1" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.safetensors").exists()
