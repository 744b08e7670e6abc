"""Generated checkpoint pickles, for the fuzz test (run in a child process so a crash is a failure).

Each case is a real container (torch's zip layout or its legacy stream) around a pickle emitted
opcode by opcode from the globals torch's allowlist and the pack's guard admit (tensor rebuilders
with storages of any type and declared size, parameters with states, numpy dtypes with BUILD states
that add object fields, numpy scalars from raw bytes, `_codecs.encode`, OrderedDict, direct
torch.Tensor construction, meta/complex rebuilders), memo references, and random structural
mutations (opcodes dropped, repeated, swapped). Every case is loaded with the pack's
`load_state_dict`; the outcome must be a dict of tensors or the pack's error. Anything else (another
exception type, a crash, more memory than the bound) is a finding.

  python tests/pickle_fuzz.py SEED COUNT OUTDIR   -> prints a JSON summary; the case being run is
                                                     kept in OUTDIR/current.ckpt until it ends.
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import sys
import zipfile

GLOBALS = [
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"), ("torch._utils", "_rebuild_wrapper_subclass"),
    ("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter"), ("torch", "Size"),
    ("collections", "OrderedDict"), ("_codecs", "encode"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy", "dtype"), ("numpy", "ndarray"), ("builtins", "set"),
    ("torch", "float32"), ("torch", "complex64"), ("torch", "float8_e4m3fn"), ("torch", "float64"),
]
STORAGES = ["FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "ByteStorage",
            "ComplexFloatStorage", "QInt8Storage", "BoolStorage"]


class Emitter:
    def __init__(self, rng):
        self.ops, self.rng, self.memo = [], rng, 0

    def raw(self, b):
        self.ops.append(b)

    def s(self, text):
        b = text.encode("utf-8", "surrogatepass")
        self.raw(b"X" + struct.pack("<I", len(b)) + b)

    def i(self, n):
        if 0 <= n < 256:
            self.raw(b"K" + bytes([n]))
        elif -2 ** 31 <= n < 2 ** 31:
            self.raw(b"J" + struct.pack("<i", n))
        else:
            enc = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.raw(b"\x8a" + bytes([len(enc)]) + enc)

    def g(self, module, name):
        self.raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def put(self):
        self.raw(b"q" + bytes([self.memo % 256]))
        self.memo += 1

    def get(self):
        if self.memo:
            self.raw(b"h" + bytes([self.rng.randrange(min(self.memo, 256))]))
        else:
            self.raw(b"N")

    def tup(self, n):
        self.raw({0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[n] if n <= 3 else None)

    def tensor(self, keys):
        r = self.rng
        kind = r.random()
        key = r.choice(list(keys))
        plain = r.random() < 0.6  # a well-formed tensor backed by its record, most of the time
        storage = "FloatStorage" if plain else r.choice(STORAGES)
        numel = keys[key] // 4 if plain else r.choice([0, 1, 4, 16, 1 << 20, 1 << 31, r.randrange(64)])
        size = numel if plain else r.choice([numel, max(numel // 2, 1), 1 << 30, 3])
        if kind < 0.55:
            self.g("torch._utils", "_rebuild_tensor_v2" if plain else
                   r.choice(["_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_tensor"]))
            self.raw(b"(")
            self.raw(b"(")
            self.s("storage")
            self.g("torch", storage) if r.random() < 0.95 else self.g("torch.storage", "UntypedStorage")
            self.s(key)
            self.s("cpu")
            self.i(numel)
            self.raw(b"t")
            self.raw(b"Q")  # BINPERSID
            self.i(0 if plain else r.choice([0, 0, 1, 5, 1 << 40]))
            self.i(size)
            self.tup(1)
            self.i(1 if plain else r.choice([1, 0, 2, 1 << 33]))
            self.tup(1)
            self.raw(r.choice([b"\x89", b"\x88"]))
            self.g("collections", "OrderedDict")
            self.tup(0)
            self.raw(b"R")
            if not plain and r.random() < 0.3:
                self.g("torch", r.choice(["float32", "complex64", "float8_e4m3fn", "float64"]))
            self.raw(b"t")
            self.raw(b"R")
        elif kind < 0.65:
            self.g(*r.choice([("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter")]))
            self.i(size)
            self.tup(1)
            self.raw(b"\x81")  # NEWOBJ
        elif kind < 0.72:
            self.g("torch._utils", r.choice(["_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass"]))
            self.raw(b"(")
            self.g("torch", "float32")
            self.i(size)
            self.tup(1)
            self.i(1)
            self.tup(1)
            self.raw(b"\x89t")
            self.raw(b"R")
        elif kind < 0.8:
            self.g("torch._utils", "_rebuild_parameter_with_state")
            self.raw(b"(")
            self.tensor(keys)
            self.raw(b"\x89")
            self.g("collections", "OrderedDict")
            self.tup(0)
            self.raw(b"R")
            self.raw(b"}")
            self.s(r.choice(["numel", "shape", "dtype", "__class__", "data", "x"]))
            self.i(r.randrange(10))
            self.raw(b"s")
            self.raw(b"t")
            self.raw(b"R")
        elif kind < 0.88:  # numpy dtype with a BUILD state, then a scalar from raw bytes
            self.g("numpy.core.multiarray", "scalar")
            self.g("numpy", "dtype")
            self.s(r.choice(["V8", "f4", "O", "i8", "u1"]))
            self.raw(b"\x89\x88\x87")
            self.raw(b"R")
            self.raw(b"(")
            self.i(3)
            self.s("|")
            self.raw(b"N")
            self.raw(b"(" if r.random() < 0.5 else b"N")
            if self.ops[-1] == b"(":
                self.s("a")
                self.raw(b"t")
            self.raw(b"N")
            self.i(8)
            self.i(1)
            self.i(0)
            self.raw(b"t")
            self.raw(b"b")
            self.raw(b"C" + bytes([8]) + bytes(r.randrange(256) for _ in range(8)))
            self.raw(b"\x86")
            self.raw(b"R")
        else:
            self.g("_codecs", "encode")
            self.s("x" * r.choice([1, 100, 100000]))
            self.s("latin1")
            self.raw(b"\x86R")
        if r.random() < 0.3:
            self.put()

    def build(self, keys, entries):
        self.raw(b"\x80\x02")
        self.raw(b"}")
        self.put()
        self.raw(b"(")
        for n in range(entries):
            self.s(f"w{n}")
            if self.rng.random() < 0.1:
                self.get()
            else:
                self.tensor(keys)
        self.raw(b"u.")
        ops = [o for o in self.ops if o is not None]
        r = self.rng
        for _ in range(r.choice([0, 0, 0, 0, 0, 1, 2, 4])):  # structural mutations
            j = r.randrange(1, len(ops) - 1)
            m = r.random()
            if m < 0.4:
                del ops[j]
            elif m < 0.7:
                ops.insert(j, ops[r.randrange(1, len(ops) - 1)])
            else:
                k = r.randrange(1, len(ops) - 1)
                ops[j], ops[k] = ops[k], ops[j]
        return b"".join(ops)


def make_case(rng, path):
    record = {str(n): bytes(rng.randrange(256) for _ in range(rng.choice([0, 4, 16, 64]))) for n in range(rng.randrange(1, 4))}
    keys = list(record)
    pkl = Emitter(rng).build({k: len(v) for k, v in record.items()}, rng.randrange(1, 5))
    if rng.random() < 0.75:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", pkl)
            for k, b in record.items():
                z.writestr(f"archive/data/{k}", b, compress_type=zipfile.ZIP_DEFLATED if rng.random() < 0.05 else None)
            z.writestr("archive/version", "3\n")
    else:  # legacy stream: magic number, protocol, sys info, main pickle, storage keys, raw storages
        import pickle
        buf = io.BytesIO()
        pickle.dump(0x1950a86a20f9469cfc6c, buf, protocol=2)
        pickle.dump(1001, buf, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
                    buf, protocol=2)
        buf.write(pkl)
        pickle.dump(keys, buf, protocol=2)
        for k in keys:
            buf.write(struct.pack("<q", len(record[k]) // 4) + record[k])
        with open(path, "wb") as f:
            f.write(buf.getvalue())


def _json_value(r, depth=0):
    k = r.random()
    if depth > 3 or k < 0.3:
        return r.choice([0, -1, 1 << 62, 2 ** 70, 1.5, "F32", "", None, True, "x" * r.randrange(40)])
    if k < 0.6:
        return [_json_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(["dtype", "shape", "data_offsets", "format", "a"]): _json_value(r, depth + 1) for _ in range(r.randrange(4))}


def make_safetensors_case(rng, path):
    """A safetensors file with an adversarial header: bad types, shapes and offsets that overlap, leave
    gaps, pass the end or overflow; duplicate names; deep nesting; huge entry counts; odd metadata."""
    r = rng
    entries, pos = [], 0
    for n in range(r.randrange(1, 6)):
        shape = r.choice([[2, 2], [], [0], [1 << 40, 1 << 40], [-1], [3, 3, 3]])
        dtype = r.choice(["F32", "F16", "BF16", "U8", "F8_E4M3", "C64", "I64", 3, None])
        nbytes = 16 if r.random() < 0.6 else r.randrange(0, 80)
        if r.random() < 0.6:  # a consistent entry, most of the time
            shape, dtype, nbytes = [2, 2], "F32", 16
        offs = [pos, pos + nbytes] if r.random() < 0.9 else r.choice([[pos + 8, pos], [0, 2 ** 64], [-4, 4], ["0", "4"]])
        pos += nbytes
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offs}
        if r.random() < 0.1:
            entry = _json_value(r)
        entries.append((r.choice(["model.diffusion_model.input_blocks.0.0.weight", f"t{n}", "v_pred",
                                  "net.blocks.0.mlp.layer1.weight", "x.comfy_quant"]), entry))
    if r.random() < 0.2:
        entries.append(("__metadata__", r.choice([{"a": "b"}, [], {"_quantization_metadata": "[" * 500}, {"k": 1}])))
    body = "{" + ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in entries) + "}"
    if r.random() < 0.05:
        body = "[" * 100000 + "]" * 100000
    raw = body.encode()
    data = bytes(r.randrange(256) for _ in range(max(pos, 0) + r.choice([0, 0, 8, -4 if pos >= 4 else 0])))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if r.random() < 0.9 else r.choice([0, 1 << 40, len(raw) + 3])) + raw + data)


def main():
    seed, count, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mode = sys.argv[4] if len(sys.argv) > 4 else "pickle"
    import torch
    from modelsmith.core import errors, pickle_guard as guard
    rng = random.Random(seed)
    path = os.path.join(outdir, "current.ckpt")
    outcomes = {"loaded": 0, "refused": 0}
    reasons, findings = {}, []
    from modelsmith.core.inspect import inspect_file
    if mode == "safetensors":
        path = os.path.join(outdir, "current.safetensors")
    for n in range(count):
        try:
            if mode == "safetensors":
                make_safetensors_case(rng, path)
                inspect_file(path)
            else:
                make_case(rng, path)
                sd = guard.load_state_dict(path)
                assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in sd.values())
            outcomes["loaded"] += 1
        except errors.ModelsmithError as e:
            outcomes["refused"] += 1
            why = str(e).split("refused to load: ", 1)[-1].split(" (", 1)[0][:60]
            reasons[why] = reasons.get(why, 0) + 1
        except BaseException as e:  # noqa: BLE001 - every other outcome is a finding
            kept = os.path.join(outdir, f"finding-{seed}-{n}" + os.path.splitext(path)[1])
            os.replace(path, kept)
            findings.append(f"case {n}: {type(e).__name__}: {str(e)[:200]} (kept as {kept})")
    with open("/proc/self/status") as f:  # this process's own high-water mark (ru_maxrss survives exec)
        peak_mb = int(next(line for line in f if line.startswith("VmHWM")).split()[1]) // 1024
    print(json.dumps({"cases": count, **outcomes, "findings": findings, "peak_rss_mb": peak_mb,
                      "top_refusals": sorted(reasons.items(), key=lambda kv: -kv[1])[:8]}))


if __name__ == "__main__":
    main()
