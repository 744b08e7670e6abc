"""Installed as users install it (README, "Install"): `git clone` into a ComfyUI's custom_nodes under a
folder name of the user's choosing, nothing else installed. A server of this runtime starts with
only that clone in its custom_nodes (--base-directory), with the developer tools and the pack's own
editable install made unimportable, and serves every node, the web extension and every bundled
template under the folder's name; the CLI runs from the clone folder the way the README says."""
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from comfy_env import ROOT, comfy_path
from conftest import ComfyServer, free_port
from modelsmith.tools import workflows as wf

pytestmark = pytest.mark.runtime  # a server of this runtime
FOLDER = "ComfyUI-Modelsmith"
# what the pack's developer environment adds to ComfyUI's own requirements (requirements-dev.txt),
# and the pack's own editable install: none of it may be needed by the installed pack
DEV_ONLY = ("pytest", "_pytest", "hypothesis", "playwright", "bitsandbytes", "websocket")


def _user_python(dump: str) -> str:
    """Code run before ComfyUI's main.py or the CLI: the pack's editable install is gone (`import
    modelsmith` finds nothing, as in a user's ComfyUI), and a thread writes which developer-only
    packages were ever imported to `dump` (they may sit in this environment, but the pack must not use them)."""
    return f"""
import atexit, sys, threading, time, json
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "modelsmith":
            raise ModuleNotFoundError("No module named 'modelsmith'", name=name)
        return None
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.meta_path.insert(0, _NotInstalled())
def _dump():
    used = sorted(m for m in list(sys.modules) if m.split(".")[0] in {DEV_ONLY!r})
    with open({dump!r}, "w") as f:
        json.dump(used, f)
def _watch():
    while True:
        _dump()
        time.sleep(0.5)
atexit.register(_dump)
threading.Thread(target=_watch, daemon=True).start()
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if not (ROOT / ".git").exists():
        pytest.skip("the pack is not a git checkout here; a clone needs one")
    base = tmp_path_factory.mktemp("user_comfy")
    (base / "custom_nodes").mkdir()
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(base / "custom_nodes" / FOLDER)],
                   check=True, timeout=300)
    return base


def test_a_clone_under_any_folder_name_loads_with_only_comfyui_s_requirements(clone, tmp_path):
    port = free_port()
    log = tmp_path / "comfyui.log"
    argv = ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(clone),
            "--disable-auto-launch"]
    dump = tmp_path / "dev_modules.json"
    code = _user_python(str(dump)) + f"sys.argv = {argv!r}\nimport runpy\nrunpy.run_path('main.py', run_name='__main__')\n"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=comfy_path(), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    srv = ComfyServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        import time
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, srv.log_tail()
            try:
                srv.get("/system_stats", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, srv.log_tail()
                time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert "IMPORT FAILED" not in text or FOLDER not in text.split("IMPORT FAILED", 1)[1][:400], srv.log_tail()
        info = srv.get("/object_info")
        with open(ROOT / "tests" / "node_api.json") as f:
            expected = set(json.load(f))
        assert expected <= {k for k in info if k.startswith("Modelsmith")}
        templates = srv.get("/workflow_templates")
        assert sorted(templates.get(FOLDER, [])) == sorted(wf.TITLES.values()) and "modelsmith" not in templates
        exts = srv.get("/extensions")
        assert f"/extensions/{FOLDER}/modelsmith.js" in exts and f"/extensions/{FOLDER}/doctor.js" in exts
        with urllib.request.urlopen(f"{srv.url}/extensions/{FOLDER}/modelsmith.js", timeout=30) as r:
            assert b"registerExtension" in r.read()
        hist = srv.queue_and_wait({"1": {"class_type": "ModelsmithTagNormalize", "inputs": {
            "text": "masterpiece, safe, 1girl", "convention": "pony"}}}, timeout=120)
        assert "score_9" in json.dumps(hist["outputs"])
        time.sleep(1.5)
        assert json.loads(dump.read_text()) == [], "the installed pack imported developer-only packages"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_cli_runs_from_the_clone_folder(clone, tmp_path):
    """README: `python custom_nodes/ComfyUI-Modelsmith inspect FILE` with ComfyUI's own Python."""
    from modelsmith.core.safetensors_io import write_sparse
    f = tmp_path / "m.safetensors"
    write_sparse(f, {"model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),
                     "model.diffusion_model.label_emb.0.0.weight": ("F16", (1280, 2816)),
                     "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": ("F16", (640, 2048))})
    pack = clone / "custom_nodes" / FOLDER
    code = _user_python(str(tmp_path / "dev.json")) + (f"sys.argv = ['modelsmith', 'inspect', {str(f)!r}, '--json']\n"
                    f"import runpy\nrunpy.run_path({str(pack)!r}, run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["family"] == "sdxl"
    assert json.loads((tmp_path / "dev.json").read_text()) == []
    # the same, spelled as a user types it
    r = subprocess.run([sys.executable, str(pack), "inspect", str(f)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sdxl" in r.stdout, r.stderr
