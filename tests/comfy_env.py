"""Locating and importing the real ComfyUI runtime for the tests (no mocks)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def comfy_path() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).resolve()
    # each runtime's environment names its ComfyUI (scripts/setup.sh writes it)
    marker = Path(sys.prefix) / "modelsmith-comfyui-path"
    if marker.exists():
        return Path(marker.read_text().strip())
    return ROOT / ".comfyui"


def pack_nodes_dir():
    """The folder ComfyUI loads the pack from (one link, modelsmith -> this checkout, in the pack's
    .cache, as scripts/runtimes.sh makes it), or None when the runtime's custom_nodes/ already holds
    this checkout (cloned there): adding the folder then would load the pack twice."""
    nodes = comfy_path() / "custom_nodes"
    root = ROOT.resolve()
    if nodes.is_dir() and any(p.resolve() == root for p in nodes.iterdir()):
        return None
    d = ROOT / ".cache" / "nodes"
    d.mkdir(parents=True, exist_ok=True)
    link = d / "modelsmith"
    if not (link.is_symlink() and link.resolve() == root):
        if link.is_symlink():
            link.unlink()
        link.symlink_to(root)
    return d


def import_comfy():
    """Put ComfyUI on sys.path in CPU mode and import its modules once."""
    path = str(comfy_path())
    # The pack's root is a package folder with its own `nodes/` and `core/`: it must never shadow
    # ComfyUI's top-level modules (`python -m pytest` puts the working directory on sys.path).
    sys.path[:] = [p for p in sys.path if p not in ("", ".", str(ROOT), os.getcwd())]
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options
    comfy.options.enable_args_parsing(False) if hasattr(comfy.options, "enable_args_parsing") else None
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_auto_launch = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    # as main.py does: ComfyUI's `utils` package first, before nodes.py puts comfy/ (with its
    # utils.py) at the front of sys.path
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import utils.json_util  # noqa: F401  (imported for its side effect: ComfyUI's utils package first)
    import folder_paths
    return folder_paths


def comfy_version() -> tuple:
    """The runtime's version from its comfyui_version.py, e.g. (0, 33, 0) (tests only: expectations
    that the issues state per version; the pack itself asks the running core)."""
    f = comfy_path() / "comfyui_version.py"
    if not f.exists():  # no ComfyUI here (the fast tier): runtime tests are deselected anyway
        return (0, 0, 0)
    text = f.read_text()
    import re
    return tuple(int(x) for x in re.search(r'__version__ = "([0-9.]+)"', text).group(1).split("."))


def builds_anima_at_file_depth() -> bool:
    """ComfyUI 0.33 builds an Anima tune at its own depth; 0.29 builds 28 blocks; 0.3.75 has none."""
    return comfy_version() >= (0, 33)
