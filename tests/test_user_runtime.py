"""`COMFYUI_PATH=... make run|test` against a user's own ComfyUI (issue 26, point 2): the user's
Python and tree are used as they are, nothing is installed into them or linked into them, and the
pack is loaded exactly once, whether it was cloned into custom_nodes/ or not (and when two copies
meet, the second stands aside and says so)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from comfy_env import ROOT, comfy_path
from conftest import ComfyServer, free_port

pytestmark = [pytest.mark.runtime, pytest.mark.main_runtime]
FOLDER = "ComfyUI-Modelsmith"


@pytest.fixture
def user_tree(tmp_path):
    """A user's ComfyUI: this runtime's tree, hard-linked, with an empty custom_nodes/."""
    tree = tmp_path / "ComfyUI"
    subprocess.run(["cp", "-al", str(comfy_path()), str(tree)], check=True, timeout=300)
    for sub in ("custom_nodes", "user", "output", "temp", "input"):
        p = tree / sub
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
    (tree / "custom_nodes").mkdir()
    return tree


def _clone_into(tree):
    if not (ROOT / ".git").exists():
        pytest.skip("the pack is not a git checkout here; a clone needs one")
    dest = tree / "custom_nodes" / FOLDER
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(dest)], check=True, timeout=300)
    return dest


def _make_run(pack, tree, tmp_path):
    """`make run` as the README has it, from the checkout `pack`, against the user's tree."""
    port = free_port()
    log = tmp_path / f"run-{port}.log"
    env = {**os.environ, "COMFYUI_PATH": str(tree), "COMFYUI_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-s", "-C", str(pack), "run", f"PORT={port}"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    srv = ComfyServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.time() + 240
    while True:
        assert proc.poll() is None, srv.log_tail()
        try:
            srv.get("/system_stats", timeout=2)
            return srv
        except OSError:
            assert time.time() < deadline, srv.log_tail()
            time.sleep(0.5)


def _stop(srv):
    import signal
    try:
        os.killpg(srv.proc.pid, signal.SIGTERM)
        srv.proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(srv.proc.pid, signal.SIGKILL)


def _freeze():
    return subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                          timeout=120).stdout


def _loaded_once(srv):
    exts = srv.get("/extensions")
    mine = [e for e in exts if e.endswith("/modelsmith.js")]
    assert len(mine) == 1, mine
    assert "ModelsmithInspect" in srv.get("/object_info")
    return mine[0], srv.get("/workflow_templates")


def test_make_run_from_a_clone_in_custom_nodes_uses_the_tree_as_it_is(user_tree, tmp_path):
    pack = _clone_into(user_tree)
    before, listing = _freeze(), sorted(os.listdir(user_tree / "custom_nodes"))
    srv = _make_run(pack, user_tree, tmp_path)
    try:
        ext, templates = _loaded_once(srv)
        assert ext == f"/extensions/{FOLDER}/modelsmith.js" and FOLDER in templates and "modelsmith" not in templates
        assert "installed twice" not in srv.log_tail(200000)
    finally:
        _stop(srv)
    assert sorted(os.listdir(user_tree / "custom_nodes")) == listing == [FOLDER]  # nothing linked in
    assert _freeze() == before  # nothing installed into the user's Python
    assert not (pack / ".venv-user").exists() and not (pack / ".venv-0.33").exists()  # no environment built


def test_a_checkout_elsewhere_links_nothing_and_two_copies_load_once(user_tree, tmp_path):
    """This checkout started against a tree that also holds a clone: the checkout comes in through the
    extra_model_paths file (nothing is linked into the tree), ComfyUI imports both copies, the first
    registers and the second registers nothing and names both folders in the log."""
    _clone_into(user_tree)
    srv = _make_run(ROOT, user_tree, tmp_path)
    try:
        ext, _ = _loaded_once(srv)
        assert ext == f"/extensions/{FOLDER}/modelsmith.js"
        log = srv.log_tail(200000)
        assert "nodes/modelsmith" in log  # this checkout was imported too, from .cache/nodes
        assert "installed twice" in log and FOLDER in log.split("installed twice", 1)[1][:600]
    finally:
        _stop(srv)
    assert sorted(os.listdir(user_tree / "custom_nodes")) == [FOLDER]  # nothing linked into the tree


def test_setup_names_what_a_given_environment_lacks_and_installs_nothing(user_tree, tmp_path):
    """MODELSMITH_VENV names the user's environment: setup lists the missing test tools, installs
    nothing without a yes (no terminal here), and exits 2."""
    venv = tmp_path / "users-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    files_before = sorted(str(p.relative_to(venv)) for p in venv.rglob("*"))
    env = {**os.environ, "COMFYUI_PATH": str(user_tree), "MODELSMITH_VENV": str(venv)}
    r = subprocess.run(["bash", "scripts/setup.sh", "user"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pytest" in r.stdout and "nothing installed" in r.stderr
    assert sorted(str(p.relative_to(venv)) for p in venv.rglob("*")) == files_before
    assert os.listdir(user_tree / "custom_nodes") == []
