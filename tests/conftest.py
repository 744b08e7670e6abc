"""Test harness: the real ComfyUI runtime in-process and as a real HTTP server, plus tiny models.

(a) `comfy` imports the runtime in CPU mode with the pack loaded as a custom node and a temporary
    models/output folder; `run_graph` runs an API-format prompt through execution.PromptExecutor.
(b) `server` starts `main.py` on a free loopback port with the same folders; `queue_and_wait`
    POSTs /prompt and polls /history.
(c) `models_dir` holds tiny checkpoints with real key names (tests/tiny.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_env import comfy_path, import_comfy, pack_nodes_dir  # noqa: E402


def _needs_runtime(item) -> bool:
    """Tests that use ComfyUI: every runtime fixture depends on `comfy`; tests that reach the runtime
    another way (a subprocess of main.py, its tree) carry the `runtime` marker."""
    return "comfy" in getattr(item, "fixturenames", ()) or item.get_closest_marker("runtime") is not None


def pytest_collection_modifyitems(config, items):
    """`make test` runs the ComfyUI-free tests (core, kernels, CLI, formats, pickles) once, in the
    runtime named by MODELSMITH_COMFY_FREE_ON (the main target), and the runtime tests everywhere; they
    are deselected elsewhere (not skipped: they did not run there and are not counted). Tests marked
    `main_runtime` exercise comfy-free machinery through a server and also run only there."""
    once_on, here = os.environ.get("MODELSMITH_COMFY_FREE_ON"), os.environ.get("MODELSMITH_RUNTIME")
    if here == "fast":  # `make test-fast`: no ComfyUI at all, only the ComfyUI-free tests (not the slow CLI ones)
        def runs_here(item):
            return not _needs_runtime(item) and not any(item.get_closest_marker(m) for m in ("main_runtime", "slow"))
    elif not once_on or not here or once_on == here:
        return
    else:
        def runs_here(item):
            return _needs_runtime(item) and item.get_closest_marker("main_runtime") is None
    keep = [i for i in items if runs_here(i)]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if not runs_here(i)])
        items[:] = keep


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    for sub in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings"):
        (d / sub).mkdir()
    return d


@pytest.fixture(scope="session")
def output_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("output")


@pytest.fixture(scope="session")
def comfy(models_dir, output_dir):
    """The real ComfyUI runtime imported in-process, nodes (and this pack) initialised."""
    folder_paths = import_comfy()
    nodes_dir = pack_nodes_dir()
    if nodes_dir is not None:  # the pack from .cache/nodes, as `make run` loads it (no link in the tree)
        folder_paths.add_model_folder_path("custom_nodes", str(nodes_dir))
    for sub in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings"):
        folder_paths.add_model_folder_path(sub, str(models_dir / sub), is_default=True)
    folder_paths.set_output_directory(str(output_dir))
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    assert "ModelsmithInspect" in nodes.NODE_CLASS_MAPPINGS, "the pack did not register in ComfyUI"
    return sys.modules


@pytest.fixture(scope="session")
def anima_files(comfy, models_dir):
    """The tiny Anima's three files in the models folder (tests/tiny_anima.py)."""
    import tiny_anima
    return tiny_anima.save(models_dir)


@pytest.fixture(scope="session")
def tiny_files(comfy, models_dir):
    """Tiny checkpoints in the models folder: name -> path."""
    import tiny
    ck = models_dir / "checkpoints"
    files = {
        "sd1": tiny.save(ck / "tiny_sd1.safetensors", "sd1", seed=1),
        "sdxl": tiny.save(ck / "tiny_sdxl.safetensors", "sdxl", seed=2),
        "sdxl_vpred_ztsnr": tiny.save(ck / "tiny_sdxl_vpred_ztsnr.safetensors", "sdxl", seed=3, markers=("v_pred", "ztsnr")),
        "sdxl_nomarker": tiny.save(ck / "tiny_sdxl_nomarker.safetensors", "sdxl", seed=3),
    }
    return files


class _StubServer:
    """What PromptExecutor needs of PromptServer; records the messages it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []
        self.sockets_metadata = {}

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@pytest.fixture(scope="session")
def run_graph(comfy):
    import execution

    def run(prompt: dict, outputs=None):
        server = _StubServer()
        executor = execution.PromptExecutor(server, cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise AssertionError(f"invalid prompt: {valid[1]} {valid[3]}")
        executor.execute(prompt, prompt_id, {"client_id": "tests"}, valid[2])
        if not executor.success:
            errs = [d for e, d in server.messages if e == "execution_error"]
            raise AssertionError(f"execution failed: {errs}")
        return executor, server
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, url, proc, log):
        self.url, self.proc, self.log = url, proc, log

    def get(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path, body, timeout=30):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue_and_wait(self, prompt, timeout=300):
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "tests"})
        assert status == 200, f"/prompt refused: {body}"
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                return hist[pid]
            if pid in hist and hist[pid].get("status", {}).get("status_str") == "error":
                return hist[pid]
            time.sleep(0.2)
        raise AssertionError(f"prompt {pid} did not finish in {timeout}s; log tail:\n{self.log_tail()}")

    def log_tail(self, n=4000):
        try:
            return Path(self.log).read_text(errors="replace")[-n:]
        except OSError:
            return ""


def start_server(models_dir, output_dir, log_path, timeout=180, extra_args=(), cwd=None):
    port = free_port()
    cfg = Path(log_path).with_suffix(".yaml")
    nodes_dir = pack_nodes_dir()
    cfg.write_text("modelsmith_tests:\n    base_path: %s\n" % models_dir + "".join(
        f"    {s}: {s}/\n" for s in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "embeddings"))
        + (f"modelsmith_pack:\n    base_path: {nodes_dir}\n    custom_nodes: .\n" if nodes_dir else ""))
    log = open(log_path, "w")
    cpath = comfy_path()
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--extra-model-paths-config", str(cfg), "--output-directory", str(output_dir),
         "--disable-auto-launch", "--disable-metadata", *extra_args],
        cwd=cwd or cpath, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    srv = ComfyServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{srv.log_tail()}")
        try:
            srv.get("/system_stats", timeout=2)
            return srv
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"ComfyUI did not start in {timeout}s:\n{srv.log_tail()}")


def stop_server(srv):
    srv.proc.terminate()
    try:
        srv.proc.wait(20)
    except subprocess.TimeoutExpired:
        srv.proc.kill()


@pytest.fixture(scope="session")
def server(tiny_files, models_dir, output_dir, tmp_path_factory):
    """A real ComfyUI server on a free loopback port with the pack and the tiny models."""
    srv = start_server(models_dir, output_dir, tmp_path_factory.mktemp("server") / "comfyui.log")
    yield srv
    stop_server(srv)
