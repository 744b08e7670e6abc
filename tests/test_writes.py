"""What the pack writes stays where it was asked to, never clobbers, and fails with a sentence:
symlinks planted at partial or recipe names, existing recipes, recipe replay, broken recipes,
read-only folders, long names, stale partials after kill -9, and a directory scan with a bad file."""
import json
import os
import signal
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from modelsmith.core.errors import ModelsmithError


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("writes_in")
    paths = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(320, 4, 3, 3, generator=g),
              "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(320, 768, generator=g),
              "model.diffusion_model.out.2.weight": torch.randn(4, 320, 3, 3, generator=g)}
        p = d / f"m{i}.safetensors"
        safetensors.torch.save_file(sd, str(p))
        paths.append(p)
    return paths


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "modelsmith", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    return r


def test_a_planted_symlink_at_the_partial_name_is_never_followed(tmp_path, monkeypatch):
    """The partial is created O_CREAT|O_EXCL|O_NOFOLLOW under a random name: a link planted at the very
    name it will use makes creation fail (clear error), and the link's target is untouched; links at
    the old predictable names are simply never used."""
    import secrets
    from modelsmith.core.files import ExclusiveFile
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(secrets, "token_hex", lambda n: "deadbeef")
    probe = ExclusiveFile(str(out_dir / "x.safetensors"))
    name = probe.tmp_name
    probe.abort()
    os.symlink(outside, out_dir / name)
    os.symlink(outside, out_dir / f".x.safetensors.{os.getpid()}.partial")  # the pattern used before
    with pytest.raises(ModelsmithError, match="cannot write"):
        ExclusiveFile(str(out_dir / "x.safetensors"))
    assert outside.read_text() == "precious" and not (out_dir / "x.safetensors").exists()


@pytest.mark.slow  # many CLI processes: `make test` runs it, the fast tier does not
def test_cli_convert_with_planted_links_writes_only_its_output(two_models, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    for pid in range(os.getpid() - 50, os.getpid() + 200):
        os.symlink(outside, out_dir / f".conv.safetensors.{pid}.partial")
    r = _cli("convert", two_models[0], out_dir / "conv.safetensors", "--dtype", "fp16")
    assert r.returncode == 0, r.stderr
    assert outside.read_bytes() == b"precious"
    assert safetensors.torch.load_file(str(out_dir / "conv.safetensors"))["model.diffusion_model.out.2.weight"].dtype == torch.float16
    os.symlink(outside, out_dir / "taken.safetensors")  # a link at the output name itself
    r = _cli("convert", two_models[0], out_dir / "taken.safetensors")
    assert r.returncode == 2 and "exists" in r.stderr and outside.read_bytes() == b"precious"


def test_merge_never_overwrites_or_follows_a_recipe(two_models, tmp_path):
    out = tmp_path / "merged.safetensors"
    recipe = tmp_path / "merged.safetensors.recipe.json"
    recipe.write_text("my own notes")
    r = _cli("merge", *two_models, out, "--alpha", "0.5")
    assert r.returncode == 2 and "recipe.json exists" in r.stderr
    assert recipe.read_text() == "my own notes" and not out.exists()  # refused before any work
    recipe.unlink()
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    os.symlink(outside, recipe)
    r = _cli("merge", *two_models, out, "--alpha", "0.5")
    assert r.returncode == 2 and "exists" in r.stderr and outside.read_text() == "precious" and not out.exists()
    recipe.unlink()
    r = _cli("merge", *two_models, out, "--alpha", "0.5")
    assert r.returncode == 0, r.stderr
    assert json.loads(recipe.read_text())["alpha"] == 0.5


@pytest.mark.slow  # many CLI processes: `make test` runs it, the fast tier does not
def test_recipe_replay_writes_only_where_told_and_broken_recipes_are_named(two_models, tmp_path):
    out = tmp_path / "a.safetensors"
    assert _cli("merge", *two_models, out, "--alpha", "0.3").returncode == 0
    recipe = tmp_path / "a.safetensors.recipe.json"
    evil = json.loads(recipe.read_text())
    evil["output"] = str(tmp_path / "elsewhere" / "chosen_by_recipe.safetensors")
    (tmp_path / "elsewhere").mkdir()
    recipe2 = tmp_path / "evil.recipe.json"
    recipe2.write_text(json.dumps(evil))
    r = _cli("merge", "--recipe", recipe2)
    assert r.returncode == 2 and "give the output file" in r.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []
    r = _cli("merge", "--recipe", recipe2, tmp_path / "b.safetensors")
    assert r.returncode == 0 and (tmp_path / "b.safetensors").exists() and list((tmp_path / "elsewhere").iterdir()) == []
    for text, why in (("{not json", "broken JSON"), ("[1, 2]", "expected a JSON object"),
                      ('{"method": "weighted_sum", "inputs": [], "evil": 1}', "unknown recipe fields evil"),
                      ('{"method": "weighted_sum", "inputs": "a b", "alpha": 0.5}', "wrong type"),
                      ('{"method": "weighted_sum"}', "incomplete recipe"), ("[" * 100000, "nested deeper")):
        bad = tmp_path / "bad.recipe.json"
        bad.write_text(text)
        r = _cli("merge", "--recipe", bad, tmp_path / "c.safetensors")
        assert r.returncode == 2 and why in r.stderr, (text[:30], r.stderr)


def _readonly_dir(tmp_path):
    """A read-only folder: a read-only tmpfs (root ignores permission bits), else mode 0555."""
    d = tmp_path / "ro"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode == 0:
        return d, lambda: subprocess.run(["umount", str(d)])
    if os.geteuid() == 0:
        pytest.skip("cannot make a read-only folder here: running as root without mount rights")
    d.chmod(0o555)
    return d, lambda: d.chmod(0o755)


@pytest.mark.slow  # many CLI processes: `make test` runs it, the fast tier does not
def test_read_only_folder_and_long_names_give_one_sentence(two_models, tmp_path):
    d, undo = _readonly_dir(tmp_path)
    try:
        r = _cli("convert", two_models[0], d / "x.safetensors")
        assert r.returncode == 2 and "read-only" in r.stderr, r.stderr
    finally:
        undo()
    name = "n" * 238 + ".safetensors"  # 250 characters: legal, though no room for a long partial name
    r = _cli("convert", two_models[0], tmp_path / name)
    assert r.returncode == 0 and (tmp_path / name).exists(), r.stderr
    r = _cli("convert", two_models[0], tmp_path / ("n" * 300 + ".safetensors"))
    assert r.returncode == 2 and "more than the 255 a file system allows" in r.stderr


KILL = r"""
import os, signal, sys
from modelsmith.core.convert import run_convert
def progress(done, total):
    if done >= 1:
        os.kill(os.getpid(), signal.SIGKILL)
run_convert(sys.argv[1], sys.argv[2], dtype="fp16", progress=progress)
"""


def test_stale_partials_of_a_killed_run_are_cleaned_and_said(two_models, tmp_path, caplog):
    from modelsmith.core.convert import run_convert
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / ".modelsmith-000000000000-1-00000000.partial.keep").write_text("not ours")
    (out_dir / "user.partial").write_text("not ours either")
    r = subprocess.run([sys.executable, "-c", KILL, str(two_models[0]), str(out_dir / "k.safetensors")])
    assert r.returncode == -signal.SIGKILL
    stale = [p.name for p in out_dir.iterdir() if p.name.startswith(".modelsmith-") and p.name.endswith(".partial")]
    assert len(stale) == 1 and not (out_dir / "k.safetensors").exists()
    live = out_dir / f".modelsmith-0123456789ab-{os.getpid()}-abcdef01.partial"  # a live writer's (ours)
    live.write_text("in progress")
    with caplog.at_level("WARNING", logger="modelsmith"):
        run_convert(str(two_models[1]), str(out_dir / "next.safetensors"))
    left = sorted(p.name for p in out_dir.iterdir())
    assert stale[0] not in left and live.name in left and "user.partial" in left
    assert ".modelsmith-000000000000-1-00000000.partial.keep" in left
    assert any("interrupted Modelsmith run" in m for m in caplog.messages)


def test_a_bad_file_never_stops_a_folder_scan(two_models, tmp_path, monkeypatch):
    """One file that cannot be read (permission denied; injected when running as root, which reads
    everything) is reported, and the scan goes on to the next files, in the API and the CLI."""
    import shutil
    from modelsmith.core import inspect as ins
    d = tmp_path / "models"
    d.mkdir()
    for i, p in enumerate(two_models):
        shutil.copy(p, d / f"{i}.safetensors")
    (d / "1.safetensors").chmod(0)
    if os.geteuid() == 0:
        real = ins.read_header

        def denied(path):
            if str(path).endswith("1.safetensors"):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        monkeypatch.setattr(ins, "read_header", denied)
    (d / "2.safetensors").write_bytes(b"garbage")
    shutil.copy(two_models[0], d / "3.safetensors")
    results = dict(ins.inspect_dir(d))
    assert isinstance(results[str(d / "0.safetensors")], dict) and isinstance(results[str(d / "3.safetensors")], dict)
    assert "Permission denied" in results[str(d / "1.safetensors")] and "not a valid safetensors" in results[str(d / "2.safetensors")]
    (d / "1.safetensors").chmod(0o644)


def _merge_graph(name):
    return {"1": {"class_type": "ModelsmithMergeCheckpoints", "inputs": {
        "model_a": "tiny_sdxl.safetensors", "model_b": "tiny_sdxl_nomarker.safetensors", "model_c": "none",
        "method": "weighted_sum", "alpha": 0.5, "block_weights": "", "density": 0.2, "drop": 0.9, "seed": 0,
        "dtype": "fp16", "output_name": name, "destination": "output/checkpoints", "overwrite": False}}}


def _error_text(hist):
    return json.dumps(hist["status"].get("messages", []))


def test_merge_node_over_http_never_overwrites_or_follows(server, tiny_files, output_dir, tmp_path):
    """Over the HTTP API: an existing recipe and a symlink at the output name are never written
    through; the node numbers its output instead (as ComfyUI's save nodes do), the recipe and the
    link's target keep their bytes. With overwrite on, a link at the name is replaced itself (the
    target untouched); the server goes on answering."""
    ck = output_dir / "checkpoints"
    ck.mkdir(exist_ok=True)
    (ck / "http_m1.safetensors.recipe.json").write_text("my notes")
    hist = server.queue_and_wait(_merge_graph("http_m1"))
    assert hist["status"]["status_str"] == "success", _error_text(hist)
    assert (ck / "http_m1.safetensors.recipe.json").read_text() == "my notes" and not (ck / "http_m1.safetensors").exists()
    assert (ck / "http_m1_00001.safetensors").exists() and (ck / "http_m1_00001.safetensors.recipe.json").exists()
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"precious")
    os.symlink(outside, ck / "http_m2.safetensors")
    hist = server.queue_and_wait(_merge_graph("http_m2"))
    assert hist["status"]["status_str"] == "success" and (ck / "http_m2_00001.safetensors").exists()
    assert outside.read_bytes() == b"precious" and os.path.islink(ck / "http_m2.safetensors")
    g = _merge_graph("http_m2")
    g["1"]["inputs"]["overwrite"] = True
    hist = server.queue_and_wait(g)
    assert hist["status"]["status_str"] == "success", _error_text(hist)
    assert outside.read_bytes() == b"precious" and not os.path.islink(ck / "http_m2.safetensors")
    g = _merge_graph("../escape")
    hist = server.queue_and_wait(g)
    assert hist["status"]["status_str"] == "error" and "plain file name" in _error_text(hist)
