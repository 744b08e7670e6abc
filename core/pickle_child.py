"""Pickles are opened only in a child process with hard limits; the caller never unpickles anything.

The parent (the ComfyUI server, the CLI) runs a fresh Python (`sys.executable`, a new program image:
none of the parent's memory is in it) with a minimal environment, and the child:

- sets its own limits before it reads a byte: address space, CPU time, the size of any file it
  writes (all scaled from the file's size); once torch is imported an audit hook refuses network
  access, new processes and native libraries for the rest of its life;
- reads the pickle through the static pre-scan and torch's allowlist unpickler (core/pickle_guard.py);
- checks that only the file's bytes can reach an output: every tensor is a plain CPU tensor whose
  storage lies inside the file's own memory mapping (zip checkpoints are mapped, so /proc/self/maps
  names the range), a view never materialises more bytes than its storage holds (stride-0 or
  overlapping views of a small storage are refused), and all tensors together are bounded by the
  file's size;
- writes either the tensor table (names, dtypes, shapes, a few probe values) as JSON, or the whole
  state dict as a plain safetensors file, tensor by tensor, into a private folder the parent made.

The parent then reads safetensors only. A child that dies, exceeds a limit or refuses the file is one
sentence ("refused: loading it needs more than N GB for a X MB file"), and the parent's memory is
what it was.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from .errors import ModelsmithError, a

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_AS = 4 << 30  # address space Python + torch need before any tensor (measured: ~3 GB of mappings)
CPU_SECONDS_BASE, CPU_SECONDS_PER_GB = 60, 30
OUTPUT_FACTOR = 2  # tensors of a checkpoint may share storages (tied or EMA copies): at most twice the file

_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "SYSTEMROOT", "VIRTUAL_ENV")


def limits_for(size: int) -> dict:
    """The child's limits for a file of `size` bytes."""
    gb = size / (1 << 30)
    return {"as": BASE_AS + 3 * size, "cpu": int(CPU_SECONDS_BASE + CPU_SECONDS_PER_GB * gb),
            "fsize": OUTPUT_FACTOR * size + (64 << 20)}


def _sentence(path: str, size: int, lim: dict, rc: int, err: str) -> str:
    name = os.path.basename(path)
    mb = size / 1e6
    last = next((line for line in reversed(err.strip().splitlines()) if line.strip()), "")
    if last.startswith("MODELSMITH-REFUSED: "):
        return last[len("MODELSMITH-REFUSED: "):]
    if rc in (-9, -24) or any(s in err for s in ("Cannot allocate memory", "MemoryError", "std::bad_alloc",
                                                  "failed to map segment", "out of memory")):
        if rc == -24:
            return (f"{name}: refused: loading it needs more than {lim['cpu']} s of CPU for {a(f'{mb:.1f}')} MB file "
                    f"(stopped); the file is not a plain checkpoint")
        return (f"{name}: refused: loading it needs more than {lim['as'] / 2**30:.1f} GB for {a(f'{mb:.1f}')} MB file "
                f"(stopped before it got the memory); the file is not a plain checkpoint")
    if rc == -25 or "File too large" in err:
        return (f"{name}: refused: its tensors would write more than {lim['fsize'] / 1e6:.0f} MB for {a(f'{mb:.1f}')} MB "
                f"file; the file is not a plain checkpoint")
    return f"{name}: could not be read in the pickle child ({last[:300] or f'exit status {rc}'})"


def _run(op: str, path: str, out_dir: str, extra=()):
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ModelsmithError(f"{path}: cannot read it ({e.strerror})") from None
    lim = limits_for(size)
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    child_path, fds = path, ()
    own = f"/proc/{os.getpid()}/fd/"
    if path.startswith(own) and path[len(own):].isdigit():  # a descriptor the caller checked: hand it over
        fds = (int(path[len(own):]),)
        child_path = f"/proc/self/fd/{fds[0]}"
    # the pack's own __main__ starts the child, loading the pack from its folder under a private name
    cmd = [sys.executable, PACK_DIR, "--pickle-child", op, child_path, out_dir, json.dumps(lim), *extra]
    try:
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=lim["cpu"] * 2 + 60, cwd=out_dir, pass_fds=fds)
    except subprocess.TimeoutExpired:
        raise ModelsmithError(f"{os.path.basename(path)}: refused: reading it took more than {lim['cpu'] * 2 + 60} s "
                              f"(stopped)") from None
    err = r.stderr.decode("utf-8", "replace")[-4000:]
    if r.returncode != 0:
        raise ModelsmithError(_sentence(path, size, lim, r.returncode, err))


class _Workdir:
    def __init__(self, tmp_root=None):
        self.tmp_root = tmp_root

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="modelsmith-pickle-", dir=self.tmp_root)
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def pickle_table(path, probe_names=(), tmp_root=None) -> tuple[dict, dict]:
    """({name: (safetensors dtype, shape)}, {probe name: [floats]}) of a pickle checkpoint, read in the child."""
    with _Workdir(tmp_root) as d:
        _run("table", path, d, [json.dumps(list(probe_names))])
        with open(os.path.join(d, "table.json"), encoding="utf-8") as f:
            data = json.load(f)
    return {k: (v[0], tuple(v[1])) for k, v in data["table"].items()}, data["probe"]


class converted:
    """`with converted(path) as st_path:` a plain safetensors copy of a pickle checkpoint's tensors,
    written by the child into a private folder and removed afterwards."""

    def __init__(self, path, tmp_root=None):
        self.src, self.work = os.fspath(path), _Workdir(tmp_root)

    def __enter__(self) -> str:
        d = self.work.__enter__()
        try:
            _run("convert", self.src, d)
        except BaseException:
            self.work.__exit__(None, None, None)
            raise
        return os.path.join(d, "tensors.safetensors")

    def __exit__(self, *exc):
        self.work.__exit__(*exc)


def load_state_dict(path, tmp_root=None) -> dict:
    """The tensors of a pickle checkpoint, as a dict, for code that runs the model: converted in the
    child, read here from safetensors only (into memory; the temporary file is gone afterwards)."""
    from .stream import Reader
    with converted(path, tmp_root) as st:
        with Reader(st) as r:
            return {k: r.get(k) for k in r.keys()}


# ----------------------------------------------------------------------------------------------
# the child side

def _apply_limits(lim: dict) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX: the process boundary still keeps the caller's memory apart
        return
    for name, value in (("RLIMIT_AS", lim["as"]), ("RLIMIT_CPU", lim["cpu"]), ("RLIMIT_FSIZE", lim["fsize"]),
                        ("RLIMIT_CORE", 0)):
        which = getattr(resource, name, None)
        if which is not None:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, hard))


_DENIED_EVENTS = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                  "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "ctypes.dlopen", "ctypes.cdata")


def _deny_escapes() -> None:
    """From here on this process may not reach the network, start programs or load native code: an
    audit hook (it cannot be removed) refuses those events, should anything get past the allowlist."""
    def hook(event, args):
        if event.startswith(_DENIED_EVENTS):
            raise PermissionError(f"{event} is refused while a pickle is read")
    sys.addaudithook(hook)


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """The address ranges at which this process maps `path` (Linux /proc/self/maps), or []."""
    real = os.path.realpath(path)
    out = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5] == real:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.append((lo, hi))
    except OSError:
        pass
    return out


def _refuse(msg: str) -> None:
    print("MODELSMITH-REFUSED: " + msg, file=sys.stderr)
    sys.exit(3)


def _checked(sd: dict, path: str, size: int, mapped: bool) -> dict:
    """Only the file's bytes: storages inside the file's mapping (when mapped), no view larger than
    its storage, everything together bounded by the file."""
    import torch
    name = os.path.basename(path)
    ranges = _mapped_ranges(path) if mapped else []
    if mapped and not ranges:
        _refuse(f"{name}: refused: its tensors are not backed by the file's own bytes")
    total = 0
    for k, t in sd.items():
        st = t.untyped_storage()
        nbytes = t.numel() * t.element_size()
        lo = st.data_ptr()
        if nbytes > st.nbytes() or (t.numel() and t.storage_offset() * t.element_size() + _span(t) > st.nbytes()):
            _refuse(f"{name}: refused: tensor '{k}' would materialise {nbytes} bytes from a {st.nbytes()}-byte "
                    f"storage (a stride-0 or overlapping view); the file is not a plain checkpoint")
        if mapped and st.nbytes() and not any(a <= lo and lo + st.nbytes() <= b for a, b in ranges):
            _refuse(f"{name}: refused: tensor '{k}' holds bytes that are not the file's (an uninitialised or "
                    f"constructed storage); nothing was written")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn,
                           torch.float8_e5m2, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                           torch.bool):
            _refuse(f"{name}: refused: tensor '{k}' is {t.dtype}, not a type a model file holds")
        total += nbytes
    if total > OUTPUT_FACTOR * size + (64 << 20):
        _refuse(f"{name}: refused: its tensors would make {total / 1e6:.0f} MB from a {size / 1e6:.1f} MB file")
    return sd


def _span(t) -> int:
    """Bytes from a view's first element to one past its last, in its storage."""
    if t.numel() == 0:
        return 0
    return (sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size()


def child_main(argv) -> int:
    op, path, out_dir, lim = argv[0], argv[1], argv[2], json.loads(argv[3])
    _apply_limits(lim)
    import torch  # noqa: F401  (its own start-up may load libraries; after this, nothing may)
    _deny_escapes()
    from .pickle_guard import load_state_dict as guarded
    from .pickle_guard import TORCH_TO_ST
    from .pickle_scan import torch_reads_as_zip
    size = os.path.getsize(path)
    # zip checkpoints are memory-mapped by the guard (not a pickle named .safetensors: torch gets its bytes)
    is_zip = torch_reads_as_zip(path) and not path.lower().endswith((".safetensors", ".sft"))
    try:
        sd = guarded(path)
    except ModelsmithError as e:
        _refuse(str(e))
    sd = _checked(sd, path, size, mapped=is_zip)
    if op == "table":
        probe = {}
        for name in json.loads(argv[4]):
            if name in sd and sd[name].numel() <= 65536:
                probe[name] = sd[name].float().flatten().tolist()
        table = {k: (TORCH_TO_ST.get(str(v.dtype), str(v.dtype)), list(v.shape)) for k, v in sd.items()}
        with open(os.path.join(out_dir, "table.json"), "w", encoding="utf-8") as f:
            json.dump({"table": table, "probe": probe}, f)
        return 0
    if op == "convert":
        from .stream import AtomicWriter, st_dtype
        entries = {k: (st_dtype(v.dtype), tuple(v.shape)) for k, v in sd.items()}
        with AtomicWriter(os.path.join(out_dir, "tensors.safetensors"), entries) as w:
            for k in entries:
                w.add(k, sd[k])
        return 0
    _refuse(f"unknown operation {op!r}")
    return 2
