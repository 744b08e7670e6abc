"""A static pass over a checkpoint pickle before torch reads it: bounded work, nothing executed.

torch's allowlist unpickler decides *which* globals may run; it does not bound *how much* a file may
make it allocate. A 33-byte pickle can ask for an uninitialised multi-GB tensor (NEWOBJ of
torch.Tensor with sizes), a storage record can declare more elements than the file holds, a zip
member can inflate to gigabytes, and a memoised string re-encoded a thousand times grows with every
call. This pass walks the opcodes (pickletools, no code run) on a small stack model and refuses,
with a sentence, a file that:

- calls anything but the tensor rebuilders, containers and checked values real checkpoints use
  (in particular: constructs a tensor or parameter directly, i.e. without data from the file);
- stores a tensor type without real data (meta, complex, sparse, quantized, nested storages);
- declares a storage larger than the bytes present for it (zip record, or the legacy stream), or
  compressed storage records (torch writes them stored; inflation is how zip bombs grow);
- would make the unpickler build more bytes from strings/arrays than a stated margin over the file.

After the load, `check_loaded` makes sure every tensor is a plain strided CPU tensor without Python
attributes (a BUILD state could shadow methods such as `numel`) and that all storages together are
no larger than the file plus the margin.
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile

from .errors import ModelsmithError, UnsafePickleError

# what a load may allocate beyond the file's own size (pickle structure, small Python values)
MARGIN_BYTES = 64 << 20
MAX_PICKLE_BYTES = 256 << 20  # data.pkl of a checkpoint with tens of thousands of tensors is a few MB
MAX_OPS = 20_000_000

_ITEMSIZE = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
             "Byte": 1, "Bool": 1, "Float8_e4m3fn": 1, "Float8_e5m2": 1, "Float8_e4m3fnuz": 1, "Float8_e5m2fnuz": 1,
             "UInt16": 2, "UInt32": 4, "UInt64": 8, "Untyped": 1}
_DTYPE_ITEMSIZE = {"float64": 8, "double": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
                   "int64": 8, "long": 8, "int32": 4, "int": 4, "int16": 2, "short": 2, "int8": 1, "uint8": 1,
                   "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "uint16": 2, "uint32": 4, "uint64": 8}

# callables a checkpoint pickle may invoke (REDUCE / NEWOBJ); everything else is refused here
_CALLABLES = {
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
    "collections.OrderedDict", "builtins.set", "__builtin__.set", "builtins.frozenset", "torch.Size", "torch.device",
    "_codecs.encode", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.dtype",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint", "copyreg._reconstructor", "builtins.object",
}
# names that may appear as values (arguments), never be called
_VALUES = {"torch._tensor.Tensor", "torch.Tensor", "torch.nn.parameter.Parameter", "numpy.ndarray",
           "collections.OrderedDict", "builtins.object", "__builtin__.object"}


# storage kinds that name real torch types but hold no data a model file should (refused with a reason)
_REFUSED_KINDS = {f"torch.{k}Storage" for k in ("ComplexFloat", "ComplexDouble", "ComplexHalf", "QInt8", "QUInt8",
                                               "QInt32", "QUInt4x2", "QUInt2x4")}


def _is_dtype(name: str) -> bool:
    mod, _, attr = name.rpartition(".")
    return mod == "torch" and (attr in _DTYPE_ITEMSIZE or attr.startswith(("complex", "qint", "quint")))


class _Global:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Storage:
    __slots__ = ("key", "nbytes")

    def __init__(self, key, nbytes):
        self.key, self.nbytes = key, nbytes


_MARK = object()
_OPAQUE = object()


def _storage_itemsize(g) -> int | None:
    if not isinstance(g, _Global):
        return None
    if g.name in ("torch.storage.UntypedStorage", "torch.UntypedStorage"):
        return 1  # sizes in bytes (fp8 and other dtypes without a typed storage class)
    mod, _, name = g.name.rpartition(".")
    if mod != "torch":
        return None
    if name.endswith("Storage"):
        return _ITEMSIZE.get(name[: -len("Storage")])
    return _DTYPE_ITEMSIZE.get(name)


def _refuse(path, what):
    raise ModelsmithError(f"{path}: refused to load: {what}. Nothing from it was executed. Get a .safetensors "
                          f"version of the model (never load it with the safety check turned off).")


def scan_pickle(data: bytes | io.BufferedIOBase, path: str, budget: int) -> list[_Storage]:
    """Walk one pickle; returns the storages it declares. `budget`: bytes its values may build."""
    stack, memo, storages = [], {}, []
    built = 0
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data

    def pop():
        if not stack:
            _refuse(path, "its pickle is malformed (stack underflow)")
        return stack.pop()

    def pop_mark():
        items = []
        while True:
            v = pop()
            if v is _MARK:
                return items[::-1]
            items.append(v)

    def charge(n, what):
        nonlocal built
        built += n
        if built > budget:
            _refuse(path, f"its pickle would build more than {budget >> 20} MB of values ({what}) from a "
                          f"{os.path.getsize(path) if os.path.exists(path) else 0}-byte file: a memory bomb")

    try:
        for n, (op, arg, _pos) in enumerate(pickletools.genops(stream)):
            if n > MAX_OPS:
                _refuse(path, "its pickle has more opcodes than any checkpoint")
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                break
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING",
                          "SHORT_BINSTRING", "STRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
                stack.append(arg)
            elif name in ("BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT"):
                stack.append(arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items = [pop() for _ in range(k)][::-1]
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
                stack.append(_OPAQUE)
            elif name in ("LIST", "DICT", "FROZENSET"):
                pop_mark()
                stack.append(_OPAQUE)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                pop_mark()
                if not stack:
                    _refuse(path, "its pickle is malformed")
            elif name == "APPEND":
                pop()
            elif name == "SETITEM":
                pop(), pop()
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = arg.partition(" ")
                else:
                    attr, module = pop(), pop()
                    if not isinstance(attr, str) or not isinstance(module, str):
                        _refuse(path, "its pickle names a global with non-text parts")
                g = _Global(f"{module}.{attr}")
                if g.name not in _CALLABLES and g.name not in _VALUES and _storage_itemsize(g) is None \
                        and not _is_dtype(g.name) and g.name not in _REFUSED_KINDS:
                    raise UnsafePickleError(path, g.name)
                stack.append(g)
            elif name == "BINPERSID":
                pid = pop()
                if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                    _refuse(path, "its pickle refers to outside data of an unknown kind")
                itemsize = _storage_itemsize(pid[1])
                if itemsize is None:
                    what = pid[1].name if isinstance(pid[1], _Global) else type(pid[1]).__name__
                    _refuse(path, f"it stores tensors of type {what} (no image model stores complex, "
                                  f"quantized or untyped data this way)")
                numel = pid[4]
                if not isinstance(numel, int) or numel < 0 or not isinstance(pid[2], str):
                    _refuse(path, "its pickle declares a storage with a bad size or key")
                s = _Storage(pid[2], numel * itemsize)
                storages.append(s)
                stack.append(s)
            elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    pop()
                args = pop()
                fn = pop()
                fname = fn.name if isinstance(fn, _Global) else None
                if fname not in _CALLABLES:
                    what = fname or "a computed value"
                    if fname in _VALUES:
                        _refuse(path, f"it constructs {fname} directly, a tensor with no data from the file")
                    _refuse(path, f"its pickle calls '{what}', which no model checkpoint needs")
                if fname == "_codecs.encode":  # how protocol 2 stores bytes: encode(text, "latin1")
                    if not (isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], str)
                            and args[1] in ("latin1", "latin-1")):
                        _refuse(path, "its pickle calls _codecs.encode with something other than text and 'latin1'")
                    charge(len(args[0]) * 2, "encoded strings")
                stack.append(_OPAQUE)
            elif name == "BUILD":
                state = pop()
                if isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray)):
                    charge(len(state[4]), "numpy arrays")
                if not stack:
                    _refuse(path, "its pickle is malformed")
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if not stack:
                    _refuse(path, "its pickle is malformed")
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                if not stack:
                    _refuse(path, "its pickle is malformed")
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    _refuse(path, "its pickle refers to a value it never stored")
                stack.append(memo[arg])
            elif name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                if not stack:
                    _refuse(path, "its pickle is malformed")
                stack.append(stack[-1])
            else:  # INST, OBJ, PERSID, EXT*, buffers: nothing a torch checkpoint uses
                _refuse(path, f"its pickle uses the {name} opcode, which no model checkpoint needs")
    except ModelsmithError:
        raise
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError, TypeError) as e:
        raise ModelsmithError(f"{path}: not a readable checkpoint pickle ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}). Nothing from it was executed; "
                              f"download it again or get a .safetensors version of the model.") from None
    return storages


def torch_reads_as_zip(path: str) -> bool:
    """Whether torch.load takes this file as a zip checkpoint: as torch decides it, by the local
    header magic at offset 0 (a zip appended to a legacy stream is read as the legacy stream)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def prescan(path: str) -> None:
    """Refuse, before torch reads anything, a checkpoint pickle whose loading is not bounded by the
    bytes in the file (see the module docstring)."""
    size = os.path.getsize(path)
    if torch_reads_as_zip(path):
        _prescan_zip(path, size)
    else:
        _prescan_legacy(path, size)


def _prescan_zip(path, size):
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            lowered = {}
            for i in infos:  # torch's zip reader finds names regardless of case: one name, one member
                if lowered.setdefault(i.filename.lower(), i.filename) != i.filename:
                    _refuse(path, f"two zip members whose names differ only in case ({lowered[i.filename.lower()]!r}"
                                  f", {i.filename!r}): what is checked would not be what torch reads")
            declared = sum(i.file_size for i in infos)
            if declared > size + MARGIN_BYTES:
                _refuse(path, f"its zip members declare {declared >> 20} MB unpacked in a {size >> 20} MB file: "
                              f"a zip bomb")
            names = [i.filename for i in infos]
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                raise ModelsmithError(f"{os.path.basename(path)}: a TorchScript program (torch.jit.save), not a model "
                                      f"checkpoint: it carries code and is not loaded. Get the model as .safetensors.")
            pkls = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
            if len(pkls) != 1:
                raise ModelsmithError(f"{path}: not a readable checkpoint pickle (a zip without exactly one "
                                      f"archive/data.pkl)")
            pkl = pkls[0]
            root = pkl.filename.rsplit("/", 1)[0]
            if pkl.file_size > MAX_PICKLE_BYTES:
                _refuse(path, f"its data.pkl is {pkl.file_size >> 20} MB, more than any checkpoint's")
            records = {i.filename[len(root) + len("/data/"):]: i for i in infos
                       if i.filename.startswith(root + "/data/")}
            for rec in records.values():
                if rec.compress_type != zipfile.ZIP_STORED:
                    _refuse(path, "its tensor data is compressed inside the zip (torch writes it uncompressed; "
                                  "compressed records are how zip bombs grow)")
            data = z.read(pkl)
    except zipfile.BadZipFile as e:
        raise ModelsmithError(f"{path}: not a readable checkpoint pickle (BadZipFile: {e}). The file is damaged or "
                              f"incomplete: download it again, preferably as .safetensors.") from None
    storages = scan_pickle(data, path, budget=size + MARGIN_BYTES)
    total = 0
    for s in {s.key: s for s in storages}.values():
        rec = records.get(s.key)
        if rec is None:
            raise ModelsmithError(f"{path}: not a readable checkpoint pickle (storage '{s.key}' is missing)")
        if s.nbytes > rec.file_size:
            _refuse(path, f"storage '{s.key}' declares {s.nbytes} bytes but the file holds {rec.file_size} for "
                          f"it: a tensor not backed by the file")
        total += s.nbytes
    if total > size:
        _refuse(path, f"its storages declare {total} bytes, more than the {size}-byte file")


def _prescan_legacy(path, size):
    """torch's legacy format: magic number, protocol, sys info and the main pickle, then the storage
    keys and each storage's raw bytes (8-byte count + data)."""
    import tarfile
    try:
        is_tar = tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError):
        is_tar = False
    if is_tar:
        raise ModelsmithError(f"{os.path.basename(path)}: a torch tar archive (the format of torch before 0.4, "
                              f"2017), not a checkpoint the pack reads; convert it with that old torch, or get the "
                              f"model as .safetensors.")
    with open(path, "rb") as f:
        for _ in range(3):
            scan_pickle(f, path, budget=MARGIN_BYTES)
        storages = scan_pickle(f, path, budget=size + MARGIN_BYTES)
        scan_pickle(f, path, budget=MARGIN_BYTES)  # the fifth: the storage keys, which torch unpickles too
        rest = size - f.tell()
    total = sum(s.nbytes for s in {s.key: s for s in storages}.values())
    if total > rest:
        _refuse(path, f"its storages declare {total} bytes but only {max(rest, 0)} bytes follow the pickle: "
                      f"tensors not backed by the file")


def check_loaded(sd: dict, path: str, size: int) -> dict:
    """After the load: plain strided CPU tensors with data, no Python attributes, total storage bounded
    by the file. Returns the dict with parameters as plain tensors."""
    import torch
    seen, total, out = set(), 0, {}
    for k, v in sd.items():
        if type(v) not in (torch.Tensor, torch.nn.Parameter):
            _refuse(path, f"'{k}' is a {type(v).__name__}, not a plain tensor")
        if getattr(v, "__dict__", None):
            _refuse(path, f"tensor '{k}' carries Python attributes ({', '.join(sorted(v.__dict__))[:80]}) that "
                          f"would shadow its methods")
        if v.device.type != "cpu" or v.layout != torch.strided or v.is_quantized or v.is_complex() or v.is_nested:
            _refuse(path, f"tensor '{k}' is a {v.device.type} / {v.layout} / {v.dtype} tensor: no data a model "
                          f"file should hold")
        storage = v.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
        out[k] = v.detach() if type(v) is torch.nn.Parameter else v
    if total > size + MARGIN_BYTES:
        _refuse(path, f"its tensors hold {total} bytes, more than the {size}-byte file")
    return out
