"""The pickle guard: `.ckpt/.pt/.pth` files are read only through torch's allowlist unpickler
(`weights_only=True`), widened by the few harmless globals real SD checkpoints carry. Those extra
globals are mapped to inert stand-ins; anything else is refused with its name, before it runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
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


# numpy values real checkpoints carry in their training metadata: scalars and small arrays of plain
# numbers. numpy's own reconstructors are never exposed: a dtype's BUILD state can add object fields
# and `scalar(dtype, raw bytes)` then dereferences those bytes as pointers (a process crash). The
# names a pickle uses map to the checks below, which build only bool/int/uint/float values.
_NUMPY_KINDS = "biuf"
MAX_NUMPY_BYTES = 64 << 20  # an array in a checkpoint's metadata; model weights are torch tensors


def _refuse(what: str):
    import pickle
    raise pickle.UnpicklingError(f"Unsupported class {what}")


def _plain_dtype(spec):
    import numpy as np
    if not isinstance(spec, str) or not 1 <= len(spec) <= 8:
        _refuse("numpy.dtype(non-numeric)")
    try:
        dt = np.dtype(spec)
    except TypeError:
        _refuse("numpy.dtype(non-numeric)")
    if dt.kind not in _NUMPY_KINDS or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        _refuse("numpy.dtype(non-numeric)")
    return dt


class _NumpyDType:
    """A numpy dtype as a pickle describes it: only plain numbers, and a BUILD state may set nothing
    but the byte order (numpy's state: version, byteorder, subarray, names, fields, ...)."""

    def __init__(self, spec, align=False, copy=False):
        self.dtype = _plain_dtype(spec)

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            _refuse("numpy.dtype(with fields or subarrays)")
        if state[1] in ("<", ">") and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _checked_dtype(d):
    dt = getattr(d, "dtype", None) if isinstance(d, _NumpyDType) else None
    if dt is None:
        _refuse("numpy value without a plain numeric dtype")
    return dt


def _numpy_scalar(dtype, data=None):
    """numpy's `scalar(dtype, bytes)`, for plain numbers only: returns a Python number."""
    import numpy as np
    dt = _checked_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        _refuse("numpy.scalar(bytes of the wrong size)")
    return np.frombuffer(data, dt)[0].item()


class _NumpyArray:
    """numpy's `_reconstruct` + BUILD, for plain numeric arrays backed by bytes in the file."""

    def __setstate__(self, state):
        import math

        import numpy as np
        if not isinstance(state, tuple) or len(state) != 5:
            _refuse("numpy.ndarray(state)")
        _, shape, dtype, fortran, raw = state
        dt = _checked_dtype(dtype)
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and 0 <= n < 2 ** 31 for n in shape):
            _refuse("numpy.ndarray(shape)")
        nbytes = math.prod(shape) * dt.itemsize
        if not isinstance(raw, bytes) or len(raw) != nbytes or nbytes > MAX_NUMPY_BYTES:
            _refuse("numpy.ndarray(data not in the file)")
        a = np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C")
        self.array = a.copy()


class _NumpyArrayType:
    """Stands for the `numpy.ndarray` class a pickle names; only `_reconstruct` may use it."""

    def __new__(cls, *args, **kwargs):
        _refuse("numpy.ndarray(direct construction)")


def _numpy_reconstruct(cls, shape=None, typecode=None):
    if cls is not _NumpyArrayType:
        _refuse("numpy._reconstruct(non-array class)")
    return _NumpyArray()


def _extra_safe_globals():
    """(object, 'module.name') pairs: string codecs, the checked numpy values above, stand-ins."""
    import _codecs
    extra = [(_codecs.encode, "_codecs.encode"), (_NumpyDType, "numpy.dtype"), (_NumpyArrayType, "numpy.ndarray"),
             (_NumpyArray, "modelsmith.pickle_guard.NumpyArray")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        extra.append((_numpy_scalar, f"{mod}.scalar"))
        extra.append((_numpy_reconstruct, f"{mod}._reconstruct"))
    extra += [(g, f"{g.__module__}.{g.__qualname__}") for g in STANDIN_GLOBALS]
    return extra


def _unpickler_reason(msg: str) -> str:
    """torch's own reason, without its advice to disable the check."""
    tail = msg.split("WeightsUnpickler error:", 1)[-1].strip()
    line = next((l.strip() for l in tail.splitlines() if l.strip()), "unknown reason")
    if "weights_only" in line and "False" in line:
        return "refused by torch's allowlist unpickler"
    return line[:200]


def _refused_name(msg: str) -> str | None:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return m.group(1)
    m = re.search(r"Trying to call reduce for ([^\s]+)", msg) or re.search(r"Unsupported class ([\w.]+(?:\([^)]*\))?)", msg)
    return m.group(1) if m else None


_ALLOWLIST_LOCK = threading.Lock()


@contextlib.contextmanager
def _only_our_allowlist():
    """torch's allowlist, widened by exactly the pack's entries for the duration of one load.

    torch keeps extra safe globals in one process-wide set, and ComfyUI adds numpy's real `dtype`
    and `scalar` to it at import (comfy/utils.py): the entries a crafted pickle needs to crash the
    process. While the pack loads a file, that set holds only the pack's checked stand-ins; the
    user's entries are put back afterwards, whatever happens."""
    import torch
    ser = torch.serialization
    with _ALLOWLIST_LOCK:
        saved = list(ser.get_safe_globals())
        ser.clear_safe_globals()
        try:
            ser.add_safe_globals(_extra_safe_globals())
            yield
        finally:
            ser.clear_safe_globals()
            ser.add_safe_globals(saved)


def guarded_load(path: str | os.PathLike, *, mmap: bool | None = None):
    """torch.load through the allowlist. Returns whatever data the file holds (dicts of tensors)."""
    import pickle
    import torch

    path = os.fspath(path)
    if check_regular_file(path).st_size == 0:
        raise ModelsmithError(f"{path}: empty file (0 bytes); the download or copy did not finish")
    from .pickle_scan import torch_reads_as_zip
    is_zip = torch_reads_as_zip(path)  # as torch decides it (magic at offset 0)
    if mmap is None:
        mmap = is_zip
    from .pickle_scan import prescan
    prescan(path)  # bounded: storages backed by the file, no direct tensor construction, no bombs
    try:
        with _only_our_allowlist():
            if path.lower().endswith((".safetensors", ".sft")):
                # torch.load hands a file of that name to the safetensors reader; the content decided
                # it is a pickle, so torch gets the bytes without the name (no mmap then)
                with open(path, "rb") as f:
                    return torch.load(f, map_location="cpu", weights_only=True)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=bool(mmap and is_zip))
    except pickle.UnpicklingError as e:
        name = _refused_name(str(e))
        if name:
            raise UnsafePickleError(path, name) from None
        raise ModelsmithError(
            f"{path}: refused to load: the pickle asks for something outside the allowlist of tensor data "
            f"({_unpickler_reason(str(e))}). Nothing from it was executed. Get a .safetensors version of the "
            f"model (never load it with the safety check turned off).") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, TypeError, LookupError,
            AttributeError, IndexError, UnicodeDecodeError, OverflowError, MemoryError, AssertionError) as e:
        # AssertionError: torch's legacy-format reader asserts on storage keys a damaged file lacks
        raise ModelsmithError(f"{path}: not a readable checkpoint pickle ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}). The file is damaged or "
                              f"incomplete: download it again, preferably as .safetensors.") from None


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
    from .pickle_scan import check_loaded
    path = os.fspath(path)
    return check_loaded(state_dict_of(guarded_load(path), path), path, os.path.getsize(path))


def load_state_dict_table(path, probe_names=()):
    """({name: (safetensors dtype, shape)}, {probe name: [floats]}) of a pickle checkpoint."""
    sd = load_state_dict(path)
    table = {k: (TORCH_TO_ST.get(str(v.dtype), str(v.dtype)), tuple(v.shape)) for k, v in sd.items()}
    probe = {}
    for name in probe_names:
        if name in sd and sd[name].numel() <= 65536:
            probe[name] = sd[name].float().flatten().tolist()
    return table, probe
