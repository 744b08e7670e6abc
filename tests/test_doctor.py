"""Model Doctor: the models folder at a glance in the CLI, the pack's route and its page, with fixes,
hashes, a cache, and requests that can only name files the scan listed."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from modelsmith.core import doctor
from modelsmith.core.inspect import inspect_file
from modelsmith.core.safetensors_io import write_sparse

import browser


def _sdxl_table():
    t = {f"model.diffusion_model.input_blocks.{i}.0.weight": ("F16", (320, 4 if i == 0 else 320, 3, 3)) for i in range(9)}
    t["model.diffusion_model.label_emb.0.0.weight"] = ("F16", (1280, 2816))
    t["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] = ("F16", (640, 2048))
    return t


def _anima_table(blocks):
    t = {f"net.blocks.{i}.mlp.layer1.weight": ("BF16", (8192, 2048)) for i in range(blocks)}
    t.update({"net.x_embedder.proj.1.weight": ("BF16", (2048, 68)), "net.llm_adapter.embed.weight": ("BF16", (32128, 1024)),
              "net.llm_adapter.blocks.0.cross_attn.q_proj.weight": ("BF16", (1024, 1024)),
              "net.llm_adapter.blocks.0.cross_attn.k_proj.weight": ("BF16", (1024, 1024))})
    return t


def build_models(root):
    """A models folder with one file per problem the doctor knows (real formats, small or sparse)."""
    for k in ("checkpoints", "diffusion_models", "loras", "vae", "text_encoders"):
        (root / k).mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(320, 4, 3, 3, generator=g),
          "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(320, 768, generator=g)}
    sd.update({"model_ema.diffusion_modelinput_blocks00weight": sd["model.diffusion_model.input_blocks.0.0.weight"] + 1,
               "model_ema.decay": torch.tensor(0.999)})
    torch.save({"state_dict": sd}, root / "checkpoints" / "my model.ckpt")
    write_sparse(root / "checkpoints" / "vpred_nomarker.safetensors", _sdxl_table(),
                 metadata={"modelspec.prediction_type": "v", "modelspec.architecture": "stable-diffusion-xl-v1-base"})
    shutil.copy(root / "checkpoints" / "vpred_nomarker.safetensors", root / "checkpoints" / "copy.safetensors")
    write_sparse(root / "checkpoints" / "says_sd1.safetensors", _sdxl_table(),
                 metadata={"modelspec.architecture": "stable-diffusion-v1"})
    write_sparse(root / "diffusion_models" / "anima-40.safetensors", _anima_table(40))
    lora = {}
    for i in range(52):
        lora[f"lora_unet_blocks_{i}_self_attn_q_proj.lora_down.weight"] = ("BF16", (16, 2048))
        lora[f"lora_unet_blocks_{i}_self_attn_q_proj.lora_up.weight"] = ("BF16", (2048, 16))
    write_sparse(root / "loras" / "for_3.8b.safetensors", lora)
    write_sparse(root / "vae" / "sdxl_vae.safetensors", {"encoder.conv_in.weight": ("F32", (128, 3, 3, 3)),
                                                         "decoder.conv_in.weight": ("F32", (512, 4, 3, 3))})
    (root / "checkpoints" / "evil.ckpt").write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    outside = root.parent / "outside_secret.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(outside))
    os.symlink(outside, root / "checkpoints" / "link_out.safetensors")
    return root


EXPECTED = {
    "checkpoints/my model.ckpt": {"name", "pickle"},  # a scan never unpickles: EMA/fp32 show once converted
    # the SDXL files hold no text encoders and the library none either; the Anima has neither its
    # Qwen3 nor its video VAE here: each names what to get
    "checkpoints/vpred_nomarker.safetensors": {"vpred-markers", "missing-companion"},
    "checkpoints/says_sd1.safetensors": {"metadata-lies", "missing-companion"},
    "diffusion_models/anima-40.safetensors": {"anima-core", "missing-companion"},
    "loras/for_3.8b.safetensors": {"lora-orphan"},
    "vae/sdxl_vae.safetensors": {"vae-fp16"},
    "checkpoints/evil.ckpt": {"refused"},
    "checkpoints/link_out.safetensors": {"refused"},
}


def _cli(*args, env=None):
    r = subprocess.run([sys.executable, "-m", "modelsmith", "doctor", *map(str, args)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    return r


@pytest.fixture()
def models(tmp_path):
    return build_models(tmp_path / "models")


@pytest.fixture()
def env(tmp_path):
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_cli_lists_every_file_with_its_problems(models, env):
    r = _cli(models, "--json", env=env)
    assert r.returncode == 0, r.stderr
    got = {e["id"]: {p["code"] for p in e["problems"]} for e in json.loads(r.stdout)}
    for fid, codes in EXPECTED.items():
        assert codes <= got[fid], (fid, got[fid])
    assert got["checkpoints/copy.safetensors"] == {"vpred-markers", "missing-companion"}  # duplicate only once hashed
    assert all("path" not in e for e in json.loads(r.stdout))
    text = _cli(models, env=env).stdout
    assert "its metadata says v-prediction but it has no v_pred marker" in text and "[fix: doctor --fix markers" in text
    assert "a link that leads out of the model folders; not read" in text


@pytest.mark.slow  # many CLI processes: `make test` runs it, the fast tier does not
def test_cli_fixes_write_new_files_and_keep_the_originals(models, env):
    before = (models / "checkpoints" / "my model.ckpt").read_bytes()
    r = _cli(models, "--fix", "fp16", "checkpoints/my model.ckpt", env=env)
    assert r.returncode == 0, r.stderr
    out = inspect_file(models / "checkpoints" / "my_model-fp16.safetensors")
    assert out["precision"] == "fp16" and out["ema"] and out["file"]["format"] == "safetensors"
    assert (models / "checkpoints" / "my model.ckpt").read_bytes() == before
    assert _cli(models, "--fix", "prune", "checkpoints/my model.ckpt", env=env).returncode == 0
    assert not inspect_file(models / "checkpoints" / "my_model-pruned.safetensors")["ema"]
    assert _cli(models, "--fix", "markers", "checkpoints/vpred_nomarker.safetensors", env=env).returncode == 0
    fixed = inspect_file(models / "checkpoints" / "vpred_nomarker-vpred.safetensors")
    assert fixed["prediction"] == "v" and fixed["modelspec"]["prediction_type"] == "v"
    r = _cli(models, "--fix", "rename", "checkpoints/my model.ckpt", env=env)
    assert r.returncode == 0 and (models / "checkpoints" / "my_model.ckpt").read_bytes() == before
    assert not (models / "checkpoints" / "my model.ckpt").exists()
    for bad, why in ((("fp16", "checkpoints/../../etc/passwd"), "no file"), (("fp16", "/etc/passwd"), "no file"),
                     (("ema", "checkpoints/my_model.ckpt"), "invalid choice"),
                     (("markers", "checkpoints/says_sd1.safetensors"), "does not apply"),
                     (("fp16", "checkpoints/link_out.safetensors"), "does not apply")):
        r = subprocess.run([sys.executable, "-m", "modelsmith", "doctor", str(models), "--fix", *bad],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert why in r.stderr or why == "invalid choice", (bad, r.stderr)


@pytest.mark.slow  # many CLI processes: `make test` runs it, the fast tier does not
def test_hashes_are_computed_once_and_find_duplicates(models, env, tmp_path, monkeypatch):
    r = _cli(models, "--hash", "--json", env=env)
    got = {e["id"]: e for e in json.loads(r.stdout)}
    a, b = got["checkpoints/vpred_nomarker.safetensors"], got["checkpoints/copy.safetensors"]
    assert a["sha256"] == b["sha256"] and len(a["sha256"]) == 64
    assert any(p["code"] == "duplicate" and "copy.safetensors" in p["why"] for p in a["problems"])
    assert "AutoV2 " + a["sha256"][:10].upper() in _cli(models, "--hash", env=env).stdout
    calls = []
    real = doctor.sha256_file
    monkeypatch.setattr(doctor, "sha256_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    cache = doctor.Cache(str(tmp_path / "c.json"))
    p = str(models / "checkpoints" / "copy.safetensors")
    h1 = doctor.file_hash(p, cache)
    h2 = doctor.file_hash(p, doctor.Cache(str(tmp_path / "c.json")))  # a new process reads the cache file
    assert h1 == h2 == a["sha256"] and len(calls) == 1
    os.utime(p, ns=(1, 1))  # a changed file (mtime) is hashed again
    doctor.file_hash(p, doctor.Cache(str(tmp_path / "c.json")))
    assert len(calls) == 2


def test_rescan_reads_only_what_changed(models, tmp_path, monkeypatch):
    from modelsmith.core import inspect as ins
    folders = {k: [str(models / k)] for k in ("checkpoints", "diffusion_models", "loras", "vae")}
    cache_file = str(tmp_path / "scan.json")
    first = doctor.scan(folders, doctor.Cache(cache_file))
    seen = []
    real = ins.inspect_file
    monkeypatch.setattr(ins, "inspect_file", lambda p, **kw: seen.append(p) or real(p, **kw))
    again = doctor.scan(folders, doctor.Cache(cache_file))
    assert seen == [] and [e["id"] for e in again] == [e["id"] for e in first]
    os.utime(models / "vae" / "sdxl_vae.safetensors", ns=(5, 5))
    doctor.scan(folders, doctor.Cache(cache_file))
    assert seen == [str(models / "vae" / "sdxl_vae.safetensors")]


@pytest.fixture(scope="module")
def doctor_server(comfy, tmp_path_factory):
    from conftest import start_server, stop_server
    base = tmp_path_factory.mktemp("doctor")
    models = build_models(base / "models")
    srv = start_server(models, tmp_path_factory.mktemp("doctor_out"), base / "comfyui.log")
    srv.models = models
    yield srv
    stop_server(srv)


def _post(srv, path, body):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _expected_in_server():
    """In the server the running core is asked: 0.33 builds a 40-block Anima whole, 0.29 builds 28
    of its blocks, 0.3.75 has no native Anima (the header-only CLI says from which version)."""
    from comfy_env import builds_anima_at_file_depth
    exp = dict(EXPECTED)
    if builds_anima_at_file_depth():
        exp["diffusion_models/anima-40.safetensors"] = {"missing-companion"}
    return exp


def test_route_lists_the_folder_and_refuses_path_tricks(doctor_server):
    files = doctor_server.get("/modelsmith/doctor")["files"]
    got = {f["id"]: {p["code"] for p in f["problems"]} for f in files}
    for fid, codes in _expected_in_server().items():
        assert codes <= got[fid], (fid, got[fid])
    from comfy_env import builds_anima_at_file_depth, comfy_path
    anima = next(f for f in files if f["id"] == "diffusion_models/anima-40.safetensors")
    why = " ".join(p["why"] for p in anima["problems"])
    if builds_anima_at_file_depth():
        assert "anima-core" not in {p["code"] for p in anima["problems"]}
    elif (comfy_path() / "comfy" / "ldm" / "anima").is_dir():  # 0.29: native Anima at a fixed depth
        assert "would build 28 of the 40 blocks" in why
    else:
        assert "no native Anima" in why
    assert all("path" not in f for f in files)
    for body in ({"id": "../../../etc/passwd", "action": "fp16"}, {"id": "/etc/passwd", "action": "fp16"},
                 {"id": "checkpoints/../../outside_secret.safetensors", "action": "fp16"},
                 {"id": "checkpoints/link_out.safetensors", "action": "fp16"}, {"id": 5}, ["x"]):
        status, res = _post(doctor_server, "/modelsmith/doctor/fix", body)
        assert status == 400 and res["error"], (body, res)
    status, res = _post(doctor_server, "/modelsmith/doctor/hash", {"id": "checkpoints/link_out.safetensors"})
    assert status == 400
    assert (doctor_server.models.parent / "outside_secret.safetensors").stat().st_size > 0


@pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.SKIP_REASON)
def test_page_shows_problems_and_runs_a_fix(doctor_server):
    with browser.comfy_page(doctor_server.url, ready="() => !!document.querySelector('.modelsmith-doctor-tab-button')") as page:
        page.click(".modelsmith-doctor-tab-button")
        page.wait_for_selector("tr.modelsmith-doctor-row", timeout=60000)
        rows = page.evaluate("() => [...document.querySelectorAll('tr.modelsmith-doctor-row')].map(r => "
                             "[r.dataset.id, [...r.querySelectorAll('.modelsmith-doctor-problem')].map(d => d.dataset.code)])")
        got = {fid: set(codes) for fid, codes in rows}
        for fid, codes in _expected_in_server().items():
            assert codes <= got[fid], (fid, got.get(fid))
        dlg = ".modelsmith-doctor"
        page.fill(f"{dlg} input.modelsmith-doctor-filter", "anima")  # the filter narrows the table
        rows_js = f"() => [...document.querySelectorAll('{dlg} tr.modelsmith-doctor-row')].map(r => r.dataset.id)"
        page.wait_for_function(f"() => !({rows_js})().includes('vae/sdxl_vae.safetensors')", timeout=15000)
        shown = page.evaluate(rows_js)
        assert "diffusion_models/anima-40.safetensors" in shown and "vae/sdxl_vae.safetensors" not in shown
        page.fill(f"{dlg} input.modelsmith-doctor-filter", "")
        page.wait_for_function(f"() => ({rows_js})().includes('vae/sdxl_vae.safetensors')", timeout=15000)
        page.click(f"{dlg} tr.modelsmith-doctor-row[data-id='checkpoints/vpred_nomarker.safetensors'] "
                   "button.modelsmith-doctor-fix[data-fix='markers']")
        page.wait_for_selector("tr.modelsmith-doctor-row[data-id='checkpoints/vpred_nomarker-vpred.safetensors']",
                               timeout=120000)
        for fid in ("checkpoints/copy.safetensors", "checkpoints/vpred_nomarker.safetensors"):  # hashes on demand
            page.click(f"{dlg} tr.modelsmith-doctor-row[data-id='{fid}'] button.modelsmith-doctor-hashbtn")
            page.wait_for_selector(f"tr.modelsmith-doctor-row[data-id='{fid}'] .modelsmith-doctor-hash", timeout=60000)
        page.wait_for_selector("tr.modelsmith-doctor-row[data-id='checkpoints/copy.safetensors'] "
                               ".modelsmith-doctor-problem[data-code='duplicate']", timeout=30000)
        browser.shot(page, "model_doctor.png")
        assert (doctor_server.models / "checkpoints" / "vpred_nomarker-vpred.safetensors").exists()
    fixed = inspect_file(doctor_server.models / "checkpoints" / "vpred_nomarker-vpred.safetensors")
    assert fixed["prediction"] == "v"


def test_replace_puts_the_fixed_file_in_the_originals_place(models, env):
    target = models / "checkpoints" / "vpred_nomarker.safetensors"
    r = _cli(models, "--fix", "markers", "checkpoints/vpred_nomarker.safetensors", "--replace", env=env)
    assert r.returncode == 0, r.stderr
    assert inspect_file(target)["prediction"] == "v"
    assert not [p.name for p in target.parent.iterdir() if ".modelsmith-" in p.name]  # no temporary left


def test_summary_counts_sizes_freeable_space_and_what_cannot_run(tmp_path):
    """The page head, computed in one place (core/doctor.summary) for the route, the page and the CLI."""
    models = build_models(tmp_path / "models")
    t = {"model.diffusion_model.input_blocks.0.0.weight": ("F32", (320, 4, 3, 3)),
         "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("F32", (320, 768))}
    write_sparse(models / "checkpoints" / "big_fp32.safetensors", t)
    folders = {k: [str(models / k)] for k in ("checkpoints", "diffusion_models", "loras", "vae", "text_encoders")}
    entries = doctor.scan(folders)
    s = doctor.summary(entries)
    assert s["files"] == len(entries) and s["total_bytes"] == sum(e["size"] for e in entries)
    fp32 = next(e for e in entries if e["id"] == "checkpoints/big_fp32.safetensors")
    assert s["freeable_bytes"] >= fp32["size"] // 2
    assert s["problems_by_kind"]["refused"] == 2 and s["problems_by_kind"]["fp32"] == 1
    assert {"checkpoints/evil.ckpt", "checkpoints/vpred_nomarker.safetensors", "loras/for_3.8b.safetensors"} <= \
        set(s["cannot_run"]) and "vae/sdxl_vae.safetensors" not in s["cannot_run"]
    assert sum(s["by_family"].values()) == sum(s["by_precision"].values()) == s["total_bytes"]
    assert "sdxl" in s["by_family"] and "lora" in s["by_family"] and "fp32" in s["by_precision"]
    r = _cli(models, "--no-cache")
    assert r.returncode == 0 and f"{s['files']} files" in r.stdout and "cannot run as they are" in r.stdout


@pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.SKIP_REASON)
def test_full_page_is_wide_with_summary_disk_picture_groups_and_actions(doctor_server):
    """The Model Doctor as a page of its own (served from the extension's folder): the summary the route
    computes, bars of where the space goes, rows grouped by folder and fix buttons in their own column,
    no column cut off at 1600 px."""
    exts = doctor_server.get("/extensions")
    page_url = doctor_server.url + next(e for e in exts if e.endswith("/doctor.js"))[: -len("doctor.js")] + "doctor.html"
    head = doctor_server.get("/modelsmith/doctor")["summary"]
    with browser.comfy_page(doctor_server.url) as page:
        page.goto(page_url, timeout=60000)
        page.wait_for_selector(".modelsmith-doctor[data-layout='page'] tr.modelsmith-doctor-row", timeout=60000)
        got = page.evaluate("""() => {
          const root = document.querySelector('.modelsmith-doctor');
          const t = root.querySelector('.modelsmith-doctor-table');
          const cards = Object.fromEntries([...root.querySelectorAll('.modelsmith-doctor-card')].map(c =>
              [c.className.split(' ').pop(), c.querySelector('.modelsmith-doctor-card-value').textContent]));
          const order = [...t.querySelectorAll('tr')].map(r => r.classList.contains('modelsmith-doctor-group')
              ? 'G:' + r.dataset.folder : (r.dataset.folder || 'head'));
          const segs = [...root.querySelectorAll('.modelsmith-doctor-space')].map(b => [b.dataset.kind,
              [...b.querySelectorAll('.modelsmith-doctor-seg')].map(s => [s.dataset.name, s.getBoundingClientRect().width])]);
          const actions = [...t.querySelectorAll("td[data-col='actions'] button")].length;
          const inProblems = [...t.querySelectorAll("td[data-col='problems'] button")].length;
          return {cards, order, segs, actions, inProblems, tableW: t.getBoundingClientRect().width,
                  overflow: t.scrollWidth - root.clientWidth,
                  headers: [...t.querySelectorAll('th')].map(h => h.textContent.replace(/ [^a-z]$/, ''))};
        }""")
        browser.shot(page, "doctor_page.png")
    assert got["cards"]["files"] == str(head["files"]) and got["cards"]["cannot-run"] == str(len(head["cannot_run"]))
    assert got["tableW"] > 1000 and got["overflow"] <= 0, got
    assert got["headers"] == ["file", "family", "variant", "layout", "precision", "prediction", "size", "problems", "actions"]
    # rows come under their folder's header, each folder once
    seen, current = [], None
    for item in got["order"][1:]:
        if item.startswith("G:"):
            current = item[2:]
            assert current not in seen
            seen.append(current)
        else:
            assert item == current
    assert {"checkpoints", "diffusion_models", "loras", "vae"} <= set(seen)
    # the bars: one segment per family / precision, widths in proportion to their bytes
    for kind, segs in got["segs"]:
        parts = head["by_family" if kind == "by family" else "by_precision"]
        assert [n for n, _ in segs] == list(parts)
        total = sum(w for _, w in segs)
        for (name, w), bytes_ in zip(segs, parts.values()):
            assert abs(w / total - bytes_ / head["total_bytes"]) < 0.02, (kind, name)
    assert got["actions"] >= 3 and got["inProblems"] == 0


def test_the_library_says_what_can_run(tmp_path):
    """Each diffusion model with the text encoders and VAE found for it (its family's record says which),
    a model whose companions are missing as a problem naming what to get, and a text encoder no model
    uses as unused; the same in the CLI."""
    import json as _json
    from pathlib import Path

    import test_companions as tc
    keys = _json.loads((Path(__file__).parent / "data" / "key_tables.json").read_text())["models"]
    models = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir(parents=True)
    write_sparse(models / "diffusion_models" / "flux1.safetensors", {k: tuple(v) for k, v in keys["flux1"]["tensors"].items()})
    write_sparse(models / "diffusion_models" / "qwen.safetensors", {k: tuple(v) for k, v in keys["qwen-image"]["tensors"].items()})
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "gemma_2_2b_fp16.safetensors"):
        write_sparse(models / "text_encoders" / name, tc.TEXT_ENCODERS[name][0])
    write_sparse(models / "vae" / "ae.safetensors", tc.VAES["ae.safetensors"][0])
    entries = {e["id"]: e for e in doctor.scan({k: [str(models / k)] for k in ("diffusion_models", "text_encoders", "vae")})}
    flux = entries["diffusion_models/flux1.safetensors"]
    assert flux["companions"] == {"clip-l": ["text_encoders/clip_l.safetensors"],
                                  "t5xxl": ["text_encoders/t5xxl_fp16.safetensors"], "vae": ["vae/ae.safetensors"]}
    assert [p["code"] for p in flux["problems"]] == ["fp32"]  # the tiny model is fp32; nothing missing
    qwen = entries["diffusion_models/qwen.safetensors"]
    why = " ".join(p["why"] for p in qwen["problems"] if p["code"] == "missing-companion")
    assert "Qwen2.5-VL-7B (language model), e.g. qwen_2.5_vl_7b_fp8_scaled.safetensors, in models/text_encoders" in why
    assert "qwen_image_vae.safetensors in models/vae" in why
    assert entries["text_encoders/clip_l.safetensors"]["used_by"] == ["diffusion_models/flux1.safetensors"]
    gemma = entries["text_encoders/gemma_2_2b_fp16.safetensors"]
    assert [p["code"] for p in gemma["problems"]] == ["unused"] and "lumina2" in gemma["problems"][0]["why"]
    assert doctor.summary(list(entries.values()))["cannot_run"] == ["diffusion_models/qwen.safetensors"]
    r = _cli(models, "--no-cache")
    assert "uses clip-l: text_encoders/clip_l.safetensors" in r.stdout and "no model in this library uses it" in r.stdout
