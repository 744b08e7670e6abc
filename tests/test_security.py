"""The pickle guard and the safetensors validator against malicious and corrupt files."""
import json
import os
import pickle
import struct
import subprocess
import sys
import types

import pytest
import torch
from hypothesis import example, given, settings, strategies as st, HealthCheck

from modelsmith.core.errors import ModelsmithError, UnsafePickleError
from modelsmith.core.inspect import inspect_file
from modelsmith.core.pickle_guard import load_state_dict
from modelsmith.core.safetensors_io import SafetensorsError, parse_header_bytes, read_header


def _payloads(marker):
    import builtins
    import subprocess
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('pwned')"

    class OsSystem:
        def __reduce__(self):
            return (os.system, (cmd,))

    class Eval:
        def __reduce__(self):
            return (builtins.eval, (code,))

    class Exec:
        def __reduce__(self):
            return (builtins.exec, (code,))

    class Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["touch", str(marker)],))

    class Import:  # __import__('os'): the first step of a gadget chain
        def __reduce__(self):
            return (builtins.__import__, ("os",))

    return {"os.system": OsSystem, "eval": Eval, "exec": Exec, "subprocess": Popen, "import": Import}


def _good_sd():
    return {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess", "import"])
@pytest.mark.parametrize("container", ["torch_zip", "torch_zip_nested", "legacy_torch", "raw_protocol"])
def test_malicious_pickles_are_refused(tmp_path, kind, container):
    marker = tmp_path / "PWNED"
    evil_cls = _payloads(marker)[kind]
    path = tmp_path / "evil.ckpt"
    if container == "torch_zip":
        torch.save({"state_dict": _good_sd(), "x": evil_cls()}, path)
    elif container == "torch_zip_nested":
        torch.save({"state_dict": {**_good_sd(), "extra": [{"deep": (evil_cls(),)}]}}, path)
    elif container == "legacy_torch":
        torch.save({"state_dict": _good_sd(), "x": evil_cls()}, path, _use_new_zipfile_serialization=False)
    else:
        for proto in range(0, 6):
            p = tmp_path / f"evil_p{proto}.ckpt"
            p.write_bytes(pickle.dumps({"state_dict": {"a": 1}, "x": evil_cls()}, protocol=proto))
            with pytest.raises(ModelsmithError):
                load_state_dict(p)
            assert not marker.exists()
        return
    with pytest.raises(UnsafePickleError) as e:
        load_state_dict(path)
    assert "not on the allowlist" in str(e.value)
    assert not marker.exists()
    with pytest.raises(ModelsmithError):
        inspect_file(path)
    assert not marker.exists()


def test_refusal_names_the_global(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": _good_sd(), "x": _payloads(marker)["os.system"]()}, tmp_path / "a.ckpt")
    with pytest.raises(UnsafePickleError) as e:
        load_state_dict(tmp_path / "a.ckpt")
    assert e.value.global_name in ("posix.system", "os.system", "nt.system")


def _with_fake_lightning():
    mod_names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    mods = [types.ModuleType(n) for n in mod_names]

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"
            self.best_model_path = "/logs/epoch=000.ckpt"
    ModelCheckpoint.__module__ = mod_names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mods[-1].ModelCheckpoint = ModelCheckpoint
    return dict(zip(mod_names, mods)), ModelCheckpoint


@pytest.mark.parametrize("legacy", [False, True])
def test_benign_sd_style_ckpt_loads(tmp_path, legacy):
    """An SD1-style .ckpt with training state: global_step, numpy scalars, a lightning callback object."""
    import numpy as np
    fake, MC = _with_fake_lightning()
    sys.modules.update(fake)
    try:
        obj = {"state_dict": {**_good_sd(), "model_ema.decay": torch.tensor(0.9999)}, "global_step": 470000,
               "epoch": np.int64(5), "loss": np.float64(0.1), "callbacks": {"ModelCheckpoint": MC()},
               "pytorch-lightning_version": "1.4.2"}
        torch.save(obj, tmp_path / "sd.ckpt", _use_new_zipfile_serialization=not legacy)
    finally:
        for n in fake:
            sys.modules.pop(n, None)
    sd = load_state_dict(tmp_path / "sd.ckpt")
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape == (4, 4, 3, 3)
    assert "pytorch_lightning" not in sys.modules


def _multidisk_zip(raw: bytes) -> bytes:
    """A zip .ckpt whose zip64 end locator claims a set of 2 disks (zipfile raises BadZipFile)."""
    at = raw.rindex(b"PK\x06\x07") + 16  # signature, disk number, offset, then the total number of disks
    return raw[:at] + b"\x02" + raw[at + 1:]


def _legacy_missing_storage(raw: bytes) -> bytes:
    """A legacy .ckpt whose trailing storage-key list names a storage the pickle never defined
    (torch's reader asserts)."""
    import re
    key = re.findall(rb"(\d{12,})", raw)[-1]  # storage keys are object ids written as decimal strings
    at = raw.rindex(key)
    return raw[:at] + (b"1" if key[:1] != b"1" else b"2") + raw[at + 1:]


# Found by mutating real .ckpt files: both used to escape as BadZipFile / AssertionError.
@pytest.mark.parametrize("damage", ["multidisk_zip", "legacy_missing_storage"])
def test_damaged_ckpt_gives_a_clear_error(tmp_path, damage):
    sd = _good_sd()
    legacy = damage.startswith("legacy")
    torch.save({"state_dict": sd}, tmp_path / "good.ckpt", _use_new_zipfile_serialization=not legacy)
    raw = (tmp_path / "good.ckpt").read_bytes()
    bad = _multidisk_zip(raw) if damage == "multidisk_zip" else _legacy_missing_storage(raw)
    assert bad != raw and len(bad) == len(raw)
    (tmp_path / "bad.ckpt").write_bytes(bad)
    for fn in (load_state_dict, inspect_file):
        with pytest.raises(ModelsmithError, match="bad.ckpt"):
            fn(tmp_path / "bad.ckpt")


def test_tiny_ckpt_inspects_like_its_safetensors(tiny_files, tmp_path):
    import safetensors.torch
    sd = safetensors.torch.load_file(tiny_files["sdxl_vpred_ztsnr"])
    torch.save({"state_dict": {k: v.clone() for k, v in sd.items()}, "global_step": 1}, tmp_path / "tiny.ckpt")
    a, b = inspect_file(tmp_path / "tiny.ckpt"), inspect_file(tiny_files["sdxl_vpred_ztsnr"])
    for k in ("family", "layout", "precision", "prediction", "ztsnr", "ema", "params"):
        assert a[k] == b[k], k
    assert any("pickle" in w for w in a["warnings"])


def _st(header: dict, data: bytes = b"", raw=None, length=None):
    h = raw if raw is not None else json.dumps(header).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def _valid_header():
    return {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}


CORRUPT = {
    "empty": b"",
    "four_bytes": b"\x10\x00\x00\x00",
    "huge_length": struct.pack("<Q", 2**63) + b"{}",
    "length_past_end": _st({}, length=10_000),
    "length_over_limit": struct.pack("<Q", 200_000_000) + b"{" + b" " * 100,
    "not_utf8": _st(None, raw=b"{\xff\xfe}"),
    "not_json": _st(None, raw=b"{not json"),
    "json_array": _st(None, raw=b"[1, 2, 3]"),
    "unknown_dtype": _st({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
    "negative_shape": _st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "float_shape": _st({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4),
    "offsets_reversed": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4),
    "offsets_out_of_range": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4000]}}, b"\0" * 4),
    "size_mismatch": _st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
    "overlap": _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    "gap": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
    "duplicate_names": _st(None, raw=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                     b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', data=b"\0" * 4),
    "metadata_not_strings": _st({"__metadata__": {"a": 1}}),
    "truncated_data": _st(_valid_header(), b"\0" * 10),
    "trailing_garbage": _st(_valid_header(), b"\0" * 16 + b"junk"),
    "entry_not_object": _st({"a": [1, 2]}),
    "missing_offsets": _st({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
    "huge_shape_claim": _st({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}, b"\0" * 4),
    "deep_nesting": _st(None, raw=b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_safetensors_give_one_clear_error(tmp_path, kind):
    p = tmp_path / f"{kind}.safetensors"
    p.write_bytes(CORRUPT[kind])
    with pytest.raises(ModelsmithError) as e:
        read_header(p)
    assert str(p) in str(e.value) and len(str(e.value)) < 500
    with pytest.raises(ModelsmithError):
        inspect_file(p)


def test_valid_header_parses(tmp_path):
    p = tmp_path / "ok.safetensors"
    p.write_bytes(_st(_valid_header(), b"\0" * 16))
    h = read_header(p)
    assert h.tensors["b"].shape == (2, 2)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelsmithError, match="not found"):
        inspect_file(tmp_path / "nope.safetensors")
    with pytest.raises(ModelsmithError, match="folder"):
        inspect_file(tmp_path)


def test_odd_paths_give_a_clear_error_and_never_block(tmp_path):
    """A FIFO would block a plain open() forever; symlink loops, dangling links, empty files and
    folders named like models must each give one clear error, also inside `inspect DIR`."""
    d = tmp_path / "models"
    d.mkdir()
    os.mkfifo(d / "pipe.safetensors")
    os.mkfifo(d / "pipe.ckpt")
    (d / "loop_a.safetensors").symlink_to(d / "loop_b.safetensors")
    (d / "loop_b.safetensors").symlink_to(d / "loop_a.safetensors")
    (d / "dangling.ckpt").symlink_to(tmp_path / "gone.ckpt")
    (d / "empty.ckpt").write_bytes(b"")
    (d / "empty.safetensors").write_bytes(b"")
    (d / "folder.safetensors").mkdir()
    expected = {"pipe.safetensors": "not a regular file", "pipe.ckpt": "not a regular file",
                "loop_a.safetensors": "symbolic links", "loop_b.safetensors": "symbolic links",
                "dangling.ckpt": "not found", "empty.ckpt": "empty file", "empty.safetensors": "only 0 bytes"}
    for name, msg in expected.items():
        with pytest.raises(ModelsmithError, match=msg):
            inspect_file(d / name)
    with pytest.raises(ModelsmithError, match="not a regular file"):
        load_state_dict(d / "pipe.ckpt")
    r = subprocess.run([sys.executable, "-m", "modelsmith", "inspect", str(d)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    for name, msg in expected.items():
        assert f"{name}: " in r.stderr and msg in r.stderr, (name, r.stderr)
    assert "folder.safetensors" not in r.stderr + r.stdout


@settings(max_examples=int(os.environ.get("MODELSMITH_FUZZ_EXAMPLES", 400)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=1 << 20))
def test_fuzz_header_parser_random_bytes(raw, data_size):
    try:
        parse_header_bytes(raw, data_size)
    except SafetensorsError:
        pass


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64), st.floats(allow_nan=True), st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)),
                     max_leaves=20)
_entry = st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "U8", "F4", "XX", 3]), _json),
                                "shape": st.one_of(st.lists(st.integers(-2, 64), max_size=3), _json),
                                "data_offsets": st.one_of(st.lists(st.integers(-2, 300), min_size=2, max_size=2), _json)})


@settings(max_examples=int(os.environ.get("MODELSMITH_FUZZ_EXAMPLES", 400)), deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.one_of(_entry, _json), max_size=5), st.integers(0, 400))
@example({"": {"dtype": []}}, 0)  # found by this test: an unhashable dtype raised TypeError
@example({"__metadata__": []}, 0)  # an empty list is not a metadata map
def test_fuzz_header_parser_structured(header, data_size):
    try:
        tensors, meta = parse_header_bytes(json.dumps(header).encode(), data_size)
    except SafetensorsError:
        return
    pos = 0
    for t in sorted(tensors.values(), key=lambda t: t.begin):
        assert t.begin == pos
        pos = t.end
    assert pos == data_size


@pytest.mark.parametrize("std,expected", [(0.3, "v"), (0.01, "eps")])
def test_sd2_pickle_v_or_eps_from_the_probe_tensor(tmp_path, std, expected):
    g = torch.Generator().manual_seed(0)
    pre = "model.diffusion_model."
    sd = {pre + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
          pre + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 1024),
          pre + "output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.randn(320, generator=g) * std}
    torch.save({"state_dict": sd}, tmp_path / "sd2.ckpt")
    rep = inspect_file(tmp_path / "sd2.ckpt")
    assert (rep["family"], rep["prediction"]) == ("sd2", expected)
    assert rep["recommended"]["width"] == (768 if expected == "v" else 512)


def _safetensors_with_header_length(path, low_bytes: bytes):
    """A valid safetensors file (one tensor) whose 8-byte header length starts with `low_bytes`,
    reached by padding the JSON header with spaces, as the format allows."""
    import json as _json
    import struct as _struct
    data = b"\x00" * 8
    header = _json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    want = int.from_bytes(low_bytes, "little")
    mod = 256 ** len(low_bytes)
    n = len(header) + ((want - len(header)) % mod)
    path.write_bytes(_struct.pack("<Q", n) + header + b" " * (n - len(header)) + data)
    assert path.read_bytes()[: len(low_bytes)] == low_bytes
    return path


@pytest.mark.parametrize("name,low", [("proto.safetensors", b"\x80"), ("zip.safetensors", b"PK"),
                                      ("plain.sft", b"\x40"), ("proto.sft", b"\x80")])
def test_valid_safetensors_is_never_sniffed_as_a_pickle(tmp_path, name, low):
    """About one real file in 256 has a header length whose first byte is 0x80 (pickle PROTO) or whose
    first bytes are 'PK' (zip); those files, and any with ComfyUI's .sft extension, are safetensors."""
    import safetensors.torch
    from modelsmith.core.convert import run_convert
    from modelsmith.core.inspect import inspect_file
    from modelsmith.core.safetensors_io import file_format
    p = _safetensors_with_header_length(tmp_path / name, low)
    assert list(safetensors.torch.load_file(str(p))) == ["w"]  # the reference reader takes it
    assert file_format(p) == "safetensors"
    rep = inspect_file(p)
    assert rep["file"]["format"] == "safetensors"
    out = tmp_path / "out.safetensors"
    run_convert(str(p), str(out), dtype="fp16")
    assert safetensors.torch.load_file(str(out))["w"].dtype == torch.float16


def _numpy_crash_pickle() -> bytes:
    """Only allowlisted numpy reconstruction: numpy.dtype('f8') whose BUILD state adds an object
    field, then numpy's scalar(dtype, raw bytes): unguarded, numpy reads the bytes as a PyObject
    pointer and the process dies with SIGSEGV. Opcodes torch's weights_only unpickler accepts."""
    import pickle as p

    def glob(mod, name):
        return p.GLOBAL + f"{mod}\n{name}\n".encode()

    def u(text):
        return p.BINUNICODE + struct.pack("<I", len(text)) + text.encode()

    def dtype(code):
        return glob("numpy", "dtype") + u(code) + p.NEWFALSE + p.NEWTRUE + p.TUPLE3 + p.REDUCE

    out = p.PROTO + b"\x02" + glob("numpy.core.multiarray", "scalar") + dtype("f8")
    # state: (3, "|", None, ("a",), {"a": (dtype("O"), 0)}, 8, 1, 0x1d: refcounted, pointer, init, pyapi)
    out += p.MARK + p.BININT1 + b"\x03" + u("|") + p.NONE + u("a") + p.TUPLE1
    out += p.EMPTY_DICT + u("a") + dtype("O8") + p.BININT1 + b"\x00" + p.TUPLE2 + p.SETITEM
    out += p.BININT1 + b"\x08" + p.BININT1 + b"\x01" + p.BININT1 + b"\x1d" + p.TUPLE + p.BUILD
    out += glob("_codecs", "encode") + u("A" * 8) + u("latin1") + p.TUPLE2 + p.REDUCE  # raw bytes, as numpy pickles them
    out += p.TUPLE2 + p.REDUCE + p.STOP
    return out


@pytest.mark.parametrize("ext", [".ckpt", ".pt"])
def test_numpy_object_dtype_pickle_cannot_crash_the_process(tmp_path, ext):
    """Run in a child process so a crash is a failure, not the end of the test run."""
    path = tmp_path / f"crash{ext}"
    raw = _numpy_crash_pickle()
    import zipfile as zf
    with zf.ZipFile(path, "w") as z:  # torch's zip layout around the pickle
        z.writestr("archive/data.pkl", raw)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    r = subprocess.run([sys.executable, "-m", "modelsmith", "inspect", str(path)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "numpy.dtype(" in r.stderr  # refused, not built


def test_benign_numpy_metadata_loads_as_plain_values(tmp_path):
    """Real checkpoints' numpy metadata (scalars, small float/int arrays) still loads; it comes back
    as plain numbers / arrays of plain numbers."""
    import numpy as np
    from modelsmith.core.pickle_guard import guarded_load
    obj = {"state_dict": _good_sd(), "epoch": np.int64(5), "loss": np.float32(0.25), "flag": np.bool_(True),
           "hist": np.arange(6, dtype=np.float64).reshape(2, 3), "be": np.array([1, 2], dtype=">i4")}
    torch.save(obj, tmp_path / "np.ckpt")
    got = guarded_load(tmp_path / "np.ckpt")
    assert got["epoch"] == 5 and got["loss"] == 0.25 and got["flag"] is True
    assert got["hist"].array.tolist() == [[0, 1, 2], [3, 4, 5]] and got["be"].array.tolist() == [1, 2]
    obj = {"state_dict": _good_sd(), "bad": np.array([object()], dtype=object)}
    torch.save(obj, tmp_path / "obj.ckpt")
    with pytest.raises(Exception, match="numpy"):
        guarded_load(tmp_path / "obj.ckpt")


def test_numpy_guard_holds_inside_comfyui_and_leaves_its_allowlist(comfy, tmp_path):
    """ComfyUI adds numpy's real dtype/scalar to torch's process-wide allowlist at import; the pack's
    loads still use only its checked entries, and ComfyUI's entries are back afterwards. The load
    runs in a child process so that a crash would show as a failure."""
    import torch.serialization as ser
    before = list(ser.get_safe_globals())
    assert any(getattr(g, "__name__", "") == "dtype" for g in before)  # ComfyUI's own additions
    path = tmp_path / "crash.ckpt"
    import zipfile as zf
    with zf.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _numpy_crash_pickle())
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    code = ("import sys; sys.path[:0] = [sys.argv[2]]; from comfy_env import import_comfy; import_comfy(); "
            "import comfy.utils; from modelsmith.core.pickle_guard import guarded_load\n"
            "try:\n guarded_load(sys.argv[1])\nexcept Exception as e:\n print(type(e).__name__, e); sys.exit(3)")
    r = subprocess.run([sys.executable, "-c", code, str(path), os.path.dirname(__file__)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3 and "numpy.dtype(" in r.stdout, (r.returncode, r.stdout[-800:], r.stderr[-800:])
    from modelsmith.core.pickle_guard import guarded_load
    with pytest.raises(UnsafePickleError):
        guarded_load(path)
    def ids(entries):
        return sorted(map(repr, entries))
    assert ids(ser.get_safe_globals()) == ids(before)


def test_refusals_never_suggest_disabling_the_guard(tmp_path):
    """A refusal says nothing ran and to get a safetensors file; it never repeats torch's advice to
    re-run with weights_only=False (the pickle here uses an opcode torch's unpickler refuses)."""
    import pickle as p
    path = tmp_path / "odd.ckpt"
    path.write_bytes(p.PROTO + b"\x02" + p.BINBYTES + struct.pack("<I", 3) + b"abc" + p.STOP)
    with pytest.raises(ModelsmithError) as e:
        load_state_dict(path)
    msg = str(e.value)
    assert "weights_only" not in msg and "will likely succeed" not in msg
    assert "Nothing from it was executed" in msg and "safetensors" in msg


def _cli_inspect(path):
    r = subprocess.run([sys.executable, "-m", "modelsmith", "inspect", str(path)], capture_output=True, text=True,
                       timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_header_with_too_many_entries_is_refused_quickly(tmp_path):
    """A header listing more tensors than MAX_ENTRIES is refused by count, before any JSON is built."""
    import time
    from modelsmith.core.safetensors_io import MAX_ENTRIES
    n = MAX_ENTRIES + 1
    body = ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(n))
    raw = ("{" + body + "}").encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    t = time.perf_counter()
    with pytest.raises(SafetensorsError, match=f"{n:,} tensors"):
        read_header(path)
    assert time.perf_counter() - t < 5  # bounded: no per-entry work before the refusal
    code, out = _cli_inspect(path)
    assert code == 2 and "Traceback" not in out


@pytest.mark.parametrize("case", ["deep_metadata", "deep_comfy_quant", "format_list", "format_object", "layers_list"])
def test_quantization_configs_of_any_shape_give_a_clear_error_or_are_ignored(comfy, tmp_path, case):
    """Deeply nested JSON (RecursionError before), or a format that is a list or an object (TypeError
    before): inspect reports the file, convert and the loaders give one clear error."""
    import safetensors.torch
    from modelsmith.compat.quantized import split_quantized
    deep = "[" * 5000 + "]" * 5000
    conf = {"deep_comfy_quant": deep, "format_list": json.dumps({"format": ["nvfp4"]}),
            "format_object": json.dumps({"format": {"x": 1}})}.get(case, json.dumps({"format": "float8_e4m3fn"}))
    meta = {"deep_metadata": json.dumps({"layers": {"l": {"format": "float8_e4m3fn"}}})[:-1] + ', "x": ' + deep + "}",
            "layers_list": json.dumps({"format_version": "1.0", "layers": [1, 2]})}.get(case)
    sd = {"model.diffusion_model.l.weight": torch.zeros(4, 4, dtype=torch.float8_e4m3fn),
          "model.diffusion_model.l.weight_scale": torch.ones(()),
          "model.diffusion_model.l.comfy_quant": torch.tensor(list(conf.encode()), dtype=torch.uint8)}
    path = tmp_path / f"{case}.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"_quantization_metadata": meta} if meta else None)
    code, out = _cli_inspect(path)
    assert code in (0, 2) and "Traceback" not in out, out[-1500:]
    with pytest.raises(ModelsmithError):
        split_quantized(sd, {"_quantization_metadata": meta} if meta else None, "model.diffusion_model.")


@pytest.mark.parametrize("key,shape", [("input_blocks.0.0.weight", (320,)),
                                       ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", ()),
                                       ("label_emb.0.0.weight", (1280,))])
def test_decisive_keys_of_the_wrong_rank_match_no_family(comfy, tmp_path, key, shape):
    """A decisive key with the wrong rank is reported as matching no family, not an IndexError."""
    from modelsmith.core.safetensors_io import write_sparse
    import corpus
    table = dict(corpus.sd_checkpoint("sdxl", vae=False, te=False))
    table["model.diffusion_model." + key] = ("F16", shape)
    path = tmp_path / "rank.safetensors"
    write_sparse(path, table)
    code, out = _cli_inspect(path)
    assert code in (0, 2) and "Traceback" not in out, out[-1500:]
    rep = inspect_file(path)
    assert rep["family"] in ("unknown", "sdxl")
