"""Modelsmith: a ComfyUI node pack that knows image-generation checkpoints.

Node registration uses ComfyUI's V1 mappings (NODE_CLASS_MAPPINGS): both the pinned 0.3.75 and
current ComfyUI read them, while of the V3 versioned APIs only `comfy_api.v0_0_2`/`latest` exist in
0.3.75 and their continued presence in later releases is not guaranteed (see README, "Design
choices"). The mappings are built lazily on first access and only when `comfy` is importable, so
`import modelsmith` (the CLI, the tests of core/) never imports ComfyUI or torch and changes nothing
in a running ComfyUI at import time.
"""
__version__ = "0.2.0"
_MAPPINGS = None
_SECOND_COPY = None  # where the copy this one stands aside for lives, once known


def _first_copy_elsewhere():
    """The folder of another copy of the pack that ComfyUI loaded first (two clones in custom_nodes,
    or a clone plus a link), or None. The first copy to be asked marks the process; a later copy
    from another folder registers nothing (no nodes, no web extension) and says so once, so the pack
    is never loaded twice."""
    global _SECOND_COPY
    import os
    import sys
    import types
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    mark = sys.modules.get("_modelsmith_loaded")
    if mark is None:
        mark = types.ModuleType("_modelsmith_loaded")
        mark.path = here
        sys.modules["_modelsmith_loaded"] = mark
    if mark.path != here and _SECOND_COPY is None:
        _SECOND_COPY = mark.path
        import logging
        logging.getLogger("modelsmith").warning(
            "Modelsmith is installed twice (%s and %s): using the first, ignoring this one; remove one of them",
            mark.path, here)
    return mark.path if mark.path != here else None


def _comfy_available() -> bool:
    import importlib.util  # here, not at import: `python -m modelsmith` starts without it
    try:
        return importlib.util.find_spec("comfy") is not None
    except (ImportError, ValueError):
        return False


def _mappings():
    global _MAPPINGS
    if _MAPPINGS is None:
        if _first_copy_elsewhere():
            _MAPPINGS = ({}, {})
        elif _comfy_available():
            from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
            _MAPPINGS = (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)
        else:
            _MAPPINGS = ({}, {})
    return _MAPPINGS


def __getattr__(name):
    if name == "WEB_DIRECTORY":  # the small front-end extension (node reports, Model Doctor)
        return None if _first_copy_elsewhere() else "./web"
    if name == "NODE_CLASS_MAPPINGS":
        return _mappings()[0]
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        return _mappings()[1]
    raise AttributeError(name)
