"""safetensors header reading with full validation, small tensor reads, atomic writing.

No torch here: inspection must stay fast and light. The header is validated before anything in it
is trusted: length bounds, UTF-8 JSON object, no duplicate names, known dtypes, shapes that are
lists of non-negative ints, byte ranges that match the shape, lie inside the data and tile it
exactly (as the safetensors library itself requires).
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections import namedtuple

from .errors import ModelsmithError
from .files import check_regular_file

# bits per element of every dtype the safetensors format defines
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64", "F4", "F6_E2M3", "F6_E3M2"}
MAX_HEADER_BYTES = 100_000_000  # the limit of the safetensors library


class SafetensorsError(ModelsmithError):
    """A damaged or incomplete safetensors file; the message ends with what to do about it."""

    def __init__(self, msg: str):
        if "not a valid safetensors file" in msg or "truncated" in msg:
            msg += ". The file is damaged or incomplete: download it again (or copy it again from its source)."
        super().__init__(msg)


class TensorInfo(namedtuple("TensorInfo", "dtype shape begin end")):
    """One header entry: dtype (str), shape (tuple), data offsets begin/end (ints)."""
    __slots__ = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Header:
    """A parsed header: the file's path, {name: TensorInfo}, the metadata, where the data starts, the
    file's size and how many bytes inspection has read (a plain class: no dataclasses import, the CLI
    starts faster)."""

    def __init__(self, path, tensors, metadata=None, data_start=0, file_size=0, bytes_read=0):
        self.path, self.tensors, self.metadata = path, tensors, metadata if metadata is not None else {}
        self.data_start, self.file_size, self.bytes_read = data_start, file_size, bytes_read


def _no_duplicates(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise SafetensorsError(f"duplicate name {dup!r} in the header")
    return out


MAX_ENTRIES = 100_000  # tensors in one header: real checkpoints hold a few thousand, big LoRA bundles tens of thousands
MAX_JSON_DEPTH = 32    # nesting of the small JSON documents inside a file (quantization configs)


def json_depth(text: str) -> int:
    """Deepest nesting of [ and { in a JSON text, strings skipped (linear time, no recursion)."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def small_json_object(text, what: str, max_bytes: int = 1 << 20) -> dict:
    """A JSON object embedded in a file (`_quantization_metadata`, a `comfy_quant` tensor), parsed
    within bounds: size, nesting depth, an object at the top; else one clear SafetensorsError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise SafetensorsError(f"{what}: not UTF-8 text") from None
    if not isinstance(text, str) or len(text) > max_bytes:
        raise SafetensorsError(f"{what}: not a JSON text of at most {max_bytes} bytes")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise SafetensorsError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels (not a real quantization config)")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise SafetensorsError(f"{what}: not valid JSON ({str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise SafetensorsError(f"{what}: not a JSON object")
    return obj


def quant_format_of(conf) -> str | None:
    """The `format` string of one layer's quantization config; None when it is missing or not a string."""
    fmt = conf.get("format") if isinstance(conf, dict) else None
    return fmt if isinstance(fmt, str) else None


def parse_header_bytes(raw: bytes, data_size: int, path: str = "<bytes>") -> tuple[dict, dict]:
    """Validate a header's JSON bytes against the size of the data that follows it."""
    def bad(msg):
        return SafetensorsError(f"{path}: not a valid safetensors file: {msg}")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("the header is not UTF-8") from None
    if not text.lstrip().startswith("{"):
        raise bad("the header is not a JSON object")
    entries = text.count('"data_offsets"')
    if entries > MAX_ENTRIES:
        raise bad(f"the header lists {entries:,} tensors; more than {MAX_ENTRIES:,} is refused (real "
                  f"checkpoints hold a few thousand)")
    try:
        # duplicates are decided on the parsed names (two JSON spellings of one name are one name),
        # never on the text
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except SafetensorsError as e:
        raise bad(str(e)) from None
    except (ValueError, RecursionError) as e:
        raise bad(f"the header is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise bad("the header is not a JSON object")
    if len(obj) > MAX_ENTRIES + 1:
        raise bad(f"the header lists {len(obj):,} tensors; more than {MAX_ENTRIES:,} is refused")
    metadata = obj.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    tensors = {}
    for name, entry in obj.items():
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if type(shape) is not list:
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        for d in shape:
            if type(d) is not int or d < 0:
                raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if type(offsets) is not list or len(offsets) != 2:
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or begin < 0:
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        if begin > end or end > data_size:
            raise bad(f"tensor {name!r} data_offsets {offsets} lie outside the {data_size} data bytes")
        nbits = math.prod(shape) * DTYPE_BITS[dtype]
        if nbits % 8 or nbits // 8 != end - begin:
            raise bad(f"tensor {name!r}: shape {shape} of {dtype} needs {nbits / 8:g} bytes, "
                      f"data_offsets give {end - begin}")
        tensors[name] = TensorInfo(dtype, tuple(shape), begin, end)
    pos = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin < pos:
            raise bad(f"tensor {name!r} overlaps another tensor's bytes")
        if t.begin > pos:
            raise bad(f"a gap of unused bytes before tensor {name!r}")
        pos = t.end
    if pos != data_size:
        raise bad(f"the tensors cover {pos} bytes but the file holds {data_size} bytes of data "
                  f"(truncated or padded file)")
    return tensors, metadata


PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")


def file_format(path: str | os.PathLike) -> str:
    """'safetensors' or 'pickle', decided by the content, never by one byte or by the name alone.

    A safetensors file starts with its 8-byte little-endian header length and a JSON header that
    begins with '{'. When the length is possible for the file's size and byte 8 is '{', the file is
    safetensors (even when its length bytes happen to begin with 0x80, the pickle PROTO opcode, or
    with 'PK', as for about one real file in 256); a broken header then gets the safetensors error.
    Otherwise a zip ('PK') or protocol-2+ pickle (0x80) start, or a pickle extension, means pickle."""
    path = os.fspath(path)
    size = check_regular_file(path).st_size
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ModelsmithError(f"{path}: cannot open ({e.strerror})") from None
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{":
            return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    return "pickle" if path.lower().endswith(PICKLE_EXTS) else "safetensors"


def read_header(path: str | os.PathLike) -> Header:
    """Read and validate the header of a .safetensors file; reads only the header bytes."""
    path = os.fspath(path)
    size = check_regular_file(path).st_size
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ModelsmithError(f"{path}: file not found") from None
    except OSError as e:
        raise ModelsmithError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: not a valid safetensors file: only {size} bytes, no header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
            raise SafetensorsError(
                f"{path}: not a valid safetensors file: header length {n} is impossible for a "
                f"{size}-byte file (truncated, or not safetensors at all)")
        raw = f.read(n)
        if len(raw) != n:
            raise SafetensorsError(f"{path}: not a valid safetensors file: header truncated")
    tensors, metadata = parse_header_bytes(raw.rstrip(b" "), size - 8 - n, path)
    return Header(path, tensors, metadata, 8 + n, size, 8 + n)


def read_tensor_bytes(header: Header, name: str, max_bytes: int = 1 << 20) -> bytes:
    """The raw bytes of one (small) tensor."""
    t = header.tensors[name]
    if t.end - t.begin > max_bytes:
        raise SafetensorsError(f"{header.path}: tensor {name!r} is larger than {max_bytes} bytes")
    with open(header.path, "rb") as f:
        f.seek(header.data_start + t.begin)
        data = f.read(t.end - t.begin)
    header.bytes_read += len(data)
    if len(data) != t.end - t.begin:
        raise SafetensorsError(f"{header.path}: file truncated inside tensor {name!r}")
    return data


def decode_floats(dtype: str, data: bytes) -> list[float]:
    """Decode F16/BF16/F32/F64 bytes to Python floats without numpy or torch."""
    if dtype == "F32":
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    if dtype == "F16":
        return list(struct.unpack(f"<{len(data) // 2}e", data))
    if dtype == "F64":
        return list(struct.unpack(f"<{len(data) // 8}d", data))
    if dtype == "BF16":
        halves = struct.unpack(f"<{len(data) // 2}H", data)
        return list(struct.unpack(f"<{len(halves)}f", struct.pack(f"<{len(halves)}I", *(h << 16 for h in halves))))
    if dtype in ("I64", "I32"):  # integer tensors (position ids) as floats
        size = 8 if dtype == "I64" else 4
        return [float(x) for x in struct.unpack(f"<{len(data) // size}{'q' if size == 8 else 'i'}", data)]
    raise SafetensorsError(f"cannot decode {dtype} values")


def build_header_bytes(entries: dict, metadata: dict | None = None) -> tuple[bytes, int]:
    """JSON header (8-byte length prefix included, padded to 8) for entries name -> (dtype, shape).

    Tensors are laid out in the given order; returns (prefix bytes, data size)."""
    obj = {}
    if metadata:
        obj["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    for name, (dtype, shape) in entries.items():
        nbytes = math.prod(shape) * DTYPE_BITS[dtype] // 8
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(obj, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, pos


def write_sparse(path: str | os.PathLike, entries: dict, metadata: dict | None = None) -> int:
    """A header-only full-size file: a real header, the data region a sparse hole of zeros."""
    prefix, size = build_header_bytes(entries, metadata)
    with open(path, "wb") as f:
        f.write(prefix)
        f.truncate(len(prefix) + size)
    return len(prefix) + size
