"""Every CLI command given wrong arguments answers with one sentence and exit 2, never a traceback."""
import subprocess
import sys

import pytest
import safetensors.torch
import torch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_errors")
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
          "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768)}
    safetensors.torch.save_file(sd, str(d / "a.safetensors"))
    safetensors.torch.save_file(sd, str(d / "b.safetensors"))
    (d / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (d / "bad.recipe.json").write_text("{oops")
    return d


CASES = [
    ("inspect", "{d}/missing.safetensors"),
    ("inspect", "{d}/garbage.safetensors"),
    ("inspect",),
    ("prompt", "--convention", "nope", "1girl"),
    ("convert", "{d}/missing.ckpt", "{d}/o.safetensors"),
    ("convert", "{d}/a.safetensors", "{d}/o.safetensors", "--dtype", "fp64"),
    ("convert", "{d}/a.safetensors", "{d}/a.safetensors"),
    ("merge", "{d}/a.safetensors", "{d}/o.safetensors"),
    ("merge", "{d}/a.safetensors", "{d}/b.safetensors", "{d}/o.safetensors", "--blocks", "IN00:abc"),
    ("merge", "{d}/a.safetensors", "{d}/b.safetensors", "{d}/o.safetensors", "--blocks", "XX99:0.5"),
    ("merge", "{d}/a.safetensors", "{d}/b.safetensors", "{d}/o.safetensors", "--blocks", "0.1,0.2"),
    ("merge", "{d}/a.safetensors", "{d}/b.safetensors", "{d}/o.safetensors", "--method", "nope"),
    ("merge", "--recipe", "{d}/bad.recipe.json", "{d}/o.safetensors"),
    ("merge", "--recipe", "{d}/missing.json", "{d}/o.safetensors"),
    ("merge", "--recipe", "{d}/bad.recipe.json"),
    ("workflows", "nope"),
    ("workflows", "check", "--server", "http://127.0.0.1:9"),
    ("queue", "no_such_workflow"),
    ("queue", "sdxl_t2i", "--server", "http://127.0.0.1:9"),
    ("quantize", "{d}/missing.safetensors", "{d}/q.safetensors"),
    ("quantize", "{d}/a.safetensors", "{d}/q.safetensors", "--format", "int3"),
    ("quantize", "{d}/a.safetensors", "{d}/q.safetensors", "--exclude", r"(a)\1"),
    ("nonsense-command",),
]


@pytest.mark.parametrize("args", CASES, ids=[" ".join(a)[:60] for a in CASES])
def test_wrong_arguments_give_one_sentence_and_exit_2(files, args):
    argv = [a.format(d=files) for a in args]
    r = subprocess.run([sys.executable, "-m", "modelsmith", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr and r.stderr.strip(), r.stderr[-1500:]
    assert len(r.stderr.strip().splitlines()) <= 12, r.stderr
