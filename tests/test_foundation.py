"""The pack inside the real ComfyUI runtime: import rules, registration, in-process and HTTP runs."""
import os
import subprocess
import sys

import pytest

from comfy_env import ROOT, comfy_path

import graphs


pytestmark = pytest.mark.runtime  # loads the pack into this runtime's ComfyUI


def test_imports_without_comfy_and_without_torch(tmp_path):
    code = ("import sys, modelsmith; "
            "assert modelsmith.NODE_CLASS_MAPPINGS == {}, 'nodes registered without comfy'; "
            "assert 'torch' not in sys.modules and 'comfy' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_cli_help():
    r = subprocess.run([sys.executable, "-m", "modelsmith", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "inspect" in r.stdout


def test_loading_the_pack_does_not_patch_comfy(tmp_path):
    """Import every comfy module, snapshot their attributes, load the pack as ComfyUI does, compare."""
    code = f"""
import sys, asyncio
sys.path.insert(0, {str(comfy_path())!r})
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy.model_management, comfy.sd, comfy.samplers, comfy.model_sampling, comfy.model_patcher, comfy.ops
import comfy.utils, comfy.sd1_clip, comfy.sdxl_clip, comfy.model_base, comfy.supported_models, nodes, execution, folder_paths
def snap():
    return {{(n, a): id(getattr(m, a)) for n, m in list(sys.modules.items())
            if n.split('.')[0] in ('comfy', 'nodes', 'execution', 'folder_paths') and m is not None
            for a in list(vars(m))}}
before = snap()
assert asyncio.run(nodes.load_custom_node({str(ROOT)!r}))
assert 'ModelsmithInspect' in nodes.NODE_CLASS_MAPPINGS
after = snap()
changed = [k for k in before if k in after and before[k] != after[k]]
print('CHANGED', changed)
assert not changed, changed
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def test_inspect_node_in_process(run_graph, tiny_files):
    executor, server = run_graph(graphs.inspect("checkpoints/tiny_sdxl.safetensors"))
    out = executor.history_result["outputs"]["1"]["text"][0]
    assert "family" in out and "sdxl" in out
    assert any(e == "executed" for e, _ in server.messages)


def test_inspect_node_over_http(server):
    info = server.get("/object_info/ModelsmithInspect")
    assert "checkpoints/tiny_sdxl.safetensors" in info["ModelsmithInspect"]["input"]["required"]["model_file"][0]
    hist = server.queue_and_wait(graphs.inspect("checkpoints/tiny_sdxl.safetensors"))
    assert hist["status"]["status_str"] == "success", hist["status"]
    text = hist["outputs"]["1"]["text"][0]
    assert "sdxl" in text and "checkpoint" in text


def test_object_info_lists_the_pack(server):
    info = server.get("/object_info")
    mine = [k for k in info if k.startswith("Modelsmith")]
    assert {"ModelsmithInspect", "ModelsmithCheckpointLoader"} <= set(mine)
    for name in mine:
        assert info[name]["category"].startswith("modelsmith/")
    log = server.log_tail(200000)
    assert "nodes/modelsmith" in log  # listed among the loaded custom nodes (from .cache/nodes)
    assert "installed twice" not in log
    assert not [l for l in log.splitlines() if "modelsmith" in l.lower() and ("IMPORT FAILED" in l or "Cannot import" in l)]
    import urllib.request
    with urllib.request.urlopen(server.url + "/extensions/modelsmith/modelsmith.js", timeout=10) as r:
        assert b"registerExtension" in r.read()


def test_tiny_sdxl_samples_through_core_ksampler(run_graph, tiny_files, output_dir):
    import numpy as np
    from PIL import Image
    executor, _ = run_graph(graphs.txt2img("tiny_sdxl.safetensors", loader="ModelsmithCheckpointLoader"))
    imgs = executor.history_result["outputs"]["7"]["images"]
    assert len(imgs) == 1
    img = np.asarray(Image.open(output_dir / imgs[0]["subfolder"] / imgs[0]["filename"]))
    assert img.shape == (64, 64, 3)
    assert img.std() > 0  # a real decode of a sampled latent, not a blank
