"""Hostile checkpoint pickles: memory bombs, tensors with no data from the file, meta/complex tensors,
parameters whose state shadows methods, and generated pickles/headers in a child process (a crash
or an unbounded allocation is a failure there, not a dead test run)."""
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import pytest
import torch

from modelsmith.core.errors import ModelsmithError
from modelsmith.core.inspect import inspect_file
from modelsmith.core.pickle_guard import load_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = int(os.environ.get("MODELSMITH_FUZZ_EXAMPLES", "0") or 0)
PEAK_LIMIT_MB = 1500  # a child that imports torch and inspects: about 500 MB; a bomb would be GBs


class _Storage:
    def __init__(self, pid):
        self.pid = pid


class _Tensor:
    def __init__(self, storage, size):
        self.storage, self.size = storage, size

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.size,), (1,), False, collections.OrderedDict())


class _Call:
    """An arbitrary (allowlisted) call in the pickle: fn(*args)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def _pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _zip_ckpt(path, obj, records, compress=False):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _pickle(obj))
        for key, data in records.items():
            if callable(data):  # streamed (a large record)
                info = zipfile.ZipInfo(f"archive/data/{key}")
                info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                with z.open(info, "w", force_zip64=True) as f:
                    data(f)
            else:
                z.writestr(f"archive/data/{key}", data, compress_type=zipfile.ZIP_DEFLATED if compress else None)
        z.writestr("archive/version", "3\n")


def _legacy_ckpt(path, obj, storages: dict, magic=None):
    buf = io.BytesIO()
    buf.write(magic if magic is not None else pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2))
    pickle.dump(1001, buf, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
                buf, protocol=2)
    buf.write(_pickle(obj))
    pickle.dump(list(storages), buf, protocol=2)
    for data in storages.values():
        buf.write(struct.pack("<q", len(data) // 4) + data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _float_storage(numel, key="0"):
    return _Storage(("storage", torch.FloatStorage, key, "cpu", numel))


MEMORY_LIMIT = 4 << 30  # address space of the child: torch imports in it; a multi-GB bomb cannot fit


def _limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _peak_inspect(path):
    """(exit code, stderr, peak RSS in MB) of `python -m modelsmith inspect FILE` in a child process
    limited to 4 GB of address space: the larger of the CLI's own high-water mark (VmHWM) and that of
    the pickle child it runs (RUSAGE_CHILDREN, where the unpickling happens)."""
    code = ("import runpy, sys\n"
            "sys.argv = ['modelsmith', 'inspect', sys.argv[1]]\n"
            "try:\n    runpy.run_module('modelsmith', run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "else:\n    rc = 0\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "import resource\n"
            "child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print('PEAK', max(int(hwm), child) // 1024, 'CHILD', child // 1024, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_memory)
    peak = int(r.stderr.rsplit("PEAK", 1)[1].split()[0]) if "PEAK" in r.stderr else -1
    return r.returncode, r.stderr, peak


BOMBS = {
    # the legacy stream's first pickle (the magic number) already goes through the unpickler
    "newobj_tensor_as_magic": lambda p: _legacy_ckpt(p, {}, {}, magic=b"\x80\x02ctorch\nTensor\nJ\x00\x00\x00@\x85\x81."),
    "newobj_tensor_in_zip": lambda p: _zip_ckpt(p, {"w": _Call(torch.Tensor, 1 << 30)}, {}),
    "legacy_declares_1g_floats": lambda p: _legacy_ckpt(p, {"w": _Tensor(_float_storage(1 << 30), 1 << 30)},
                                                        {"0": b"\0" * 16}),
    "zip_storage_larger_than_record": lambda p: _zip_ckpt(p, {"w": _Tensor(_float_storage(600_000_000), 600_000_000)},
                                                          {"0": b"\0" * 16}),
    "zip_bomb_deflated_record": lambda p: _zip_ckpt(p, {"w": _Tensor(_float_storage(1 << 26), 1 << 26)}, {
        "0": lambda f: [f.write(b"\0" * (1 << 24)) for _ in range(16)]}, compress=True),
    "memo_reused_string_encoded_many_times": lambda p: p.write_bytes(_memo_bomb()),
}


def _memo_bomb():
    """A 1 MB string stored once (memo 1) and `_codecs.encode`d 200 times through memo references."""
    def text(t):
        b = t.encode()
        return b"X" + struct.pack("<I", len(b)) + b
    items = []
    for i in range(200):
        arg = text("x" * (1 << 20)) + b"q\x01" if i == 0 else b"h\x01"
        items.append(text(f"k{i:03d}") + b"c_codecs\nencode\n" + arg + text("latin1") + b"\x86R")
    body = b"\x80\x02}q\x00(" + b"".join(items) + b"u."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", body)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.fixture(scope="module")
def baseline_peak(tmp_path_factory):
    """Peak memory of the same child inspecting a small benign .ckpt: what a bomb may not exceed by much."""
    path = tmp_path_factory.mktemp("benign") / "ok.ckpt"
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, path)
    rc, err, peak = _peak_inspect(path)
    assert rc == 0 and peak > 0, err[-1000:]
    assert int(err.rsplit("CHILD", 1)[1].split()[0]) > 200, "the pickle was not read in a child (no torch import there)"
    return peak


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_memory_bombs_are_refused_before_allocating(tmp_path, name, baseline_peak):
    """Each bomb is refused with one sentence, exit 2, and the child's peak memory stays within 128 MB
    of the benign baseline (measured; printed with -s)."""
    path = tmp_path / f"{name}.ckpt"
    BOMBS[name](path)
    size = path.stat().st_size
    rc, err, peak = _peak_inspect(path)
    print(f"\n{name}: {size} bytes, exit {rc}, peak {peak} MB (benign baseline {baseline_peak} MB)")
    assert rc == 2, err[-2000:]
    assert "refused" in err or "not a readable checkpoint" in err, err[-800:]
    assert "Traceback" not in err and "weights_only=False" not in err
    assert 0 < peak < baseline_peak + 128


def test_tensor_types_without_file_data_are_refused(tmp_path):
    """Meta tensors (no data), complex tensors, and parameters whose state shadows methods."""
    meta = tmp_path / "meta.ckpt"
    _zip_ckpt(meta, {"w": _Call(torch._utils._rebuild_meta_tensor_no_storage, torch.float32, (4,), (1,), False)}, {})
    cplx = tmp_path / "complex.ckpt"
    torch.save({"w": torch.zeros(4, dtype=torch.complex64)}, cplx)
    shadow = tmp_path / "shadow.ckpt"
    p = torch.nn.Parameter(torch.ones(3))
    p.numel = 5
    torch.save({"w": p}, shadow)
    for path, why in ((meta, "_rebuild_meta_tensor_no_storage"), (cplx, "ComplexFloatStorage"),
                      (shadow, "carries Python attributes \\(numel\\)")):
        for fn in (load_state_dict, inspect_file):
            with pytest.raises(ModelsmithError, match=why):
                fn(path)


def test_codecs_encode_with_another_encoding_is_a_clear_error(tmp_path):
    """Found by the long fuzz soak (cases 101/302 and 102/3604 of 10,000 each): `_codecs.encode` with an
    unknown encoding escaped as LookupError. Protocol 2 stores bytes as encode(text, 'latin1') only."""
    for enc in ("cpu", "utf-32", "rot13"):
        path = tmp_path / f"enc_{enc}.ckpt"
        _zip_ckpt(path, {"w": _Call(__import__("_codecs").encode, "abc", enc)}, {})
        with pytest.raises(ModelsmithError, match="_codecs.encode with something other than text and 'latin1'"):
            load_state_dict(path)


def test_real_checkpoints_still_load(tmp_path):
    """What torch.save writes (zip and legacy, parameters, fp8, bf16, shared storages) loads as plain tensors."""
    base = torch.arange(12, dtype=torch.float32)
    sd = {"a": base[:6], "b": base[6:], "p": torch.nn.Parameter(torch.ones(2, 2)), "h": torch.ones(3, dtype=torch.bfloat16),
          "f8": torch.ones(4).to(torch.float8_e4m3fn), "i": torch.tensor(7)}
    for legacy in (False, True):
        path = tmp_path / f"ok{legacy}.ckpt"
        torch.save({"state_dict": {k: v for k, v in sd.items() if not (legacy and k == "f8")}}, path,
                   _use_new_zipfile_serialization=not legacy)
        got = load_state_dict(path)
        assert all(type(v) is torch.Tensor for v in got.values())
        assert torch.equal(got["b"], base[6:]) and got["h"].dtype == torch.bfloat16
        if not legacy:
            assert got["f8"].dtype == torch.float8_e4m3fn


def test_a_pickle_named_safetensors_goes_through_the_guard(tmp_path):
    good = tmp_path / "model.safetensors"
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, good)
    rep = inspect_file(good)
    assert rep["file"]["format"] == "pickle" and rep["family"] == "sd1"
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with pytest.raises(ModelsmithError, match="refused to load"):
        inspect_file(bad)


def _fuzz(mode, seed, count, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(HERE, "pickle_fuzz.py"), str(seed), str(count), str(tmp_path), mode],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"the child died (exit {r.returncode}; a crash is negative): {r.stderr[-2000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{mode} fuzz seed {seed}: {json.dumps(out)}")
    return out


@pytest.mark.parametrize("seed", [11, 12])
def test_generated_pickles_never_crash_leak_or_escape(tmp_path, seed):
    """Pickles generated from the allowlisted opcodes and globals (tests/pickle_fuzz.py), each loaded in
    a child process: every outcome is tensors or the pack's error, the child never dies, memory stays
    bounded. MODELSMITH_FUZZ_EXAMPLES raises the count (default 400 per seed)."""
    out = _fuzz("pickle", seed, FUZZ or 400, tmp_path)
    assert out["findings"] == [] and out["loaded"] > 0 and out["refused"] > 0
    assert out["peak_rss_mb"] < PEAK_LIMIT_MB


def test_generated_safetensors_headers_never_crash_or_escape(tmp_path):
    out = _fuzz("safetensors", 21, FUZZ or 600, tmp_path)
    assert out["findings"] == [] and out["loaded"] > 0 and out["refused"] > 0
    assert out["peak_rss_mb"] < PEAK_LIMIT_MB
