"""The pickle guard: `.ckpt/.pt/.pth` files are read only through torch's allowlist unpickler
(`weights_only=True`), widened by the few harmless globals real SD checkpoints carry. Those extra
globals are mapped to inert stand-ins; anything else is refused with its name, before it runs.
"""
from __future__ import annotations

import os
import re
import zipfile

from .errors import ModelsmithError, UnsafePickleError
from .files import check_regular_file


class _StandIn:
    """Inert replacement for a training-time object stored in a checkpoint: keeps its state as data."""

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<stand-in for {type(self).__module__}.{type(self).__qualname__}>"


def _standin(module: str, name: str):
    return type(name, (_StandIn,), {"__module__": module, "__qualname__": name})


# Training-framework objects seen in real SD1/SD2 checkpoints (callback state), never executed.
STANDIN_GLOBALS = [
    _standin("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    _standin("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"),
]


def _extra_safe_globals():
    """(object, 'module.name') pairs for numpy scalars/arrays and string codecs: pure data."""
    import _codecs
    import numpy as np
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma
    extra = [(_codecs.encode, "_codecs.encode"), (np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        extra.append((ma.scalar, f"{mod}.scalar"))
        extra.append((ma._reconstruct, f"{mod}._reconstruct"))
    for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_):
        dt = type(np.dtype(t))
        extra.append((dt, f"numpy.dtypes.{dt.__name__}"))
    extra += [(g, f"{g.__module__}.{g.__qualname__}") for g in STANDIN_GLOBALS]
    return extra




def _refused_name(msg: str) -> str | None:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return m.group(1)
    m = re.search(r"Trying to call reduce for ([^\s]+)", msg) or re.search(r"Unsupported class ([\w.]+)", msg)
    return m.group(1) if m else None


def guarded_load(path: str | os.PathLike, *, mmap: bool | None = None):
    """torch.load through the allowlist. Returns whatever data the file holds (dicts of tensors)."""
    import pickle
    import torch

    path = os.fspath(path)
    if check_regular_file(path).st_size == 0:
        raise ModelsmithError(f"{path}: empty file (0 bytes); the download or copy did not finish")
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # e.g. a damaged end record claiming a multi-disk archive
        is_zip = False
    if mmap is None:
        mmap = is_zip
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=bool(mmap and is_zip))
    except pickle.UnpicklingError as e:
        name = _refused_name(str(e))
        if name:
            raise UnsafePickleError(path, name) from None
        raise ModelsmithError(f"{path}: refused to load: {str(e).splitlines()[0][:300]}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, IndexError, UnicodeDecodeError, OverflowError, MemoryError, AssertionError) as e:
        # AssertionError: torch's legacy-format reader asserts on storage keys a damaged file lacks
        raise ModelsmithError(f"{path}: not a readable checkpoint pickle ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def state_dict_of(obj, path="") -> dict:
    """The tensor dict inside a loaded checkpoint (`state_dict`, `model`, `module`, or the top level)."""
    import torch
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                top = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                return {**inner, **top}
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ModelsmithError(f"{path}: holds no tensors (not a model checkpoint)")


TORCH_TO_ST = {
    "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float64": "F64",
    "torch.float8_e4m3fn": "F8_E4M3", "torch.float8_e5m2": "F8_E5M2", "torch.uint8": "U8", "torch.int8": "I8",
    "torch.int16": "I16", "torch.int32": "I32", "torch.int64": "I64", "torch.bool": "BOOL",
}


def load_state_dict(path) -> dict:
    return state_dict_of(guarded_load(path), os.fspath(path))


def load_state_dict_table(path, probe_names=()):
    """({name: (safetensors dtype, shape)}, {probe name: [floats]}) of a pickle checkpoint."""
    sd = load_state_dict(path)
    table = {k: (TORCH_TO_ST.get(str(v.dtype), str(v.dtype)), tuple(v.shape)) for k, v in sd.items()}
    probe = {}
    for name in probe_names:
        if name in sd and sd[name].numel() <= 65536:
            probe[name] = sd[name].float().flatten().tolist()
    return table, probe
