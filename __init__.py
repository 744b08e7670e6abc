"""Modelsmith: a ComfyUI node pack that knows image-generation checkpoints.

Node registration uses ComfyUI's V1 mappings (NODE_CLASS_MAPPINGS): both the pinned 0.3.75 and
current ComfyUI read them, while of the V3 versioned APIs only `comfy_api.v0_0_2`/`latest` exist in
0.3.75 and their continued presence in later releases is not guaranteed (see README, "Design
choices"). The mappings are built lazily on first access and only when `comfy` is importable, so
`import modelsmith` (the CLI, the tests of core/) never imports ComfyUI or torch and changes nothing
in a running ComfyUI at import time.
"""
__version__ = "0.2.0"
# the small front-end extension that shows a node's reported text inside the node
WEB_DIRECTORY = "./web"
_MAPPINGS = None


def _comfy_available() -> bool:
    import importlib.util  # here, not at import: `python -m modelsmith` starts without it
    try:
        return importlib.util.find_spec("comfy") is not None
    except (ImportError, ValueError):
        return False


def _mappings():
    global _MAPPINGS
    if _MAPPINGS is None:
        if _comfy_available():
            from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
            _MAPPINGS = (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)
        else:
            _MAPPINGS = ({}, {})
    return _MAPPINGS


def __getattr__(name):
    if name == "NODE_CLASS_MAPPINGS":
        return _mappings()[0]
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        return _mappings()[1]
    raise AttributeError(name)
