"""Streaming tensors in and out of safetensors files, one tensor at a time.

Reading uses `os.pread` into a fresh buffer (no mmap of the whole file, so input pages never count
against the process), and tells the kernel it may drop the pages it read. Writing goes to a
temporary file in the target folder: header first (its size known up front), tensors in order,
fsync, then an atomic rename that never replaces an existing file unless asked.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil

from .errors import ModelsmithError
from .files import ExclusiveFile, check_writable_folder
from .safetensors_io import Header, build_header_bytes, read_header

ST_TO_TORCH_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U8": "uint8", "I8": "int8",
                    "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool", "U16": "uint16",
                    "U32": "uint32", "U64": "uint64"}
TORCH_NAME_TO_ST = {v: k for k, v in ST_TO_TORCH_NAME.items()}


def torch_dtype(st: str):
    import torch
    name = ST_TO_TORCH_NAME.get(st)
    if name is None or not hasattr(torch, name):
        raise ModelsmithError(f"tensors of type {st} are not supported here")
    return getattr(torch, name)


def st_dtype(dtype) -> str:
    return TORCH_NAME_TO_ST[str(dtype).replace("torch.", "")]


class Reader:
    """Random access to the tensors of one safetensors file, without mapping it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.header: Header = read_header(self.path)
        self.fd = os.open(self.path, os.O_RDONLY)

    def keys(self):
        return self.header.tensors.keys()

    def __contains__(self, name):
        return name in self.header.tensors

    def info(self, name):
        return self.header.tensors[name]

    @property
    def metadata(self):
        return self.header.metadata

    def get(self, name):
        import torch
        t = self.header.tensors[name]
        n = t.end - t.begin
        dtype = torch_dtype(t.dtype)
        if n == 0:
            return torch.empty(t.shape, dtype=dtype)
        buf = torch.empty(n, dtype=torch.uint8)  # uninitialised: no time spent zero-filling
        view = memoryview(buf.numpy())
        got = 0
        while got < n:
            chunk = os.preadv(self.fd, [view[got:]], self.header.data_start + t.begin + got)
            if chunk <= 0:
                raise ModelsmithError(f"{self.path}: file ended inside tensor {name!r}")
            got += chunk
        if hasattr(os, "posix_fadvise"):  # the pages were read once; let the kernel drop them
            os.posix_fadvise(self.fd, self.header.data_start + t.begin, n, os.POSIX_FADV_DONTNEED)
        return buf.view(dtype).reshape(t.shape)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_output_path(path, *, allowed_roots=None, overwrite=False) -> str:
    """Refuse names that escape the allowed folders and existing files (unless overwrite)."""
    path = os.path.abspath(os.fspath(path))
    if allowed_roots is not None:
        roots = [os.path.realpath(r) for r in allowed_roots]
        real_parent = os.path.realpath(os.path.dirname(path))
        if not any(real_parent == r or real_parent.startswith(r + os.sep) for r in roots):
            raise ModelsmithError(f"{path}: outside the allowed output folders")
    if os.path.exists(path) and not overwrite:
        raise ModelsmithError(f"{path} exists; choose another name or allow overwrite")
    return path


def check_free_space(folder, needed: int, margin: int = 64 << 20):
    free = shutil.disk_usage(folder).free
    if free < needed + margin:
        raise ModelsmithError(f"not enough free disk space in {folder}: {needed / 1e9:.2f} GB needed, "
                              f"{free / 1e9:.2f} GB free")


HASH_PLACEHOLDER = "0" * 64


class AtomicWriter:
    """Write a safetensors file tensor by tensor: entries {name: (st dtype, shape)} fixed up front.

    With `hash_key` set, that metadata key gets the sha256 of the data (written at the end into a
    placeholder of the same length, so the header size never changes)."""

    def __init__(self, path, entries: dict, metadata: dict | None = None, *, overwrite=False, hash_key=None,
                 late: dict | None = None):
        self.path = check_output_path(path, overwrite=overwrite)
        self.entries = dict(entries)
        self.metadata = dict(metadata or {})
        self.hash_key = hash_key
        if hash_key:
            self.metadata[hash_key] = HASH_PLACEHOLDER
        # late metadata {key: reserved characters}: known only once the data is written (set_late)
        self.late = {k: (chr(0x7e) * n, None) for k, n in (late or {}).items()}
        for k, (placeholder, _) in self.late.items():
            self.metadata[k] = placeholder
        self.prefix, self.data_size = build_header_bytes(self.entries, self.metadata)
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ModelsmithError(f"cannot create the output folder {folder} ({e.strerror})") from None
        check_writable_folder(folder)
        check_free_space(folder, len(self.prefix) + self.data_size)
        self.overwrite = overwrite
        self.xf = None
        self.order = list(self.entries)
        self.next = 0
        self.sha = hashlib.sha256()
        self.f = None
        self._pool = None
        self._pending = None

    def __enter__(self):
        from concurrent.futures import ThreadPoolExecutor
        self.xf = ExclusiveFile(self.path, overwrite=self.overwrite)  # O_EXCL|O_NOFOLLOW partial, dir fd once
        self.f, self.tmp = self.xf.f, self.xf.tmp
        try:
            self._write(self.prefix)
        except BaseException:
            self._abort()
            raise
        # hashing and writing run on a second thread (both release the GIL) while the caller
        # prepares the next tensor; one write in flight keeps memory bounded
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelsmith-writer")
        return self

    def _hash_and_write(self, data, owner):  # owner: the tensor whose memory `data` views
        self.sha.update(data)
        self._write(data)

    def _wait(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, data):
        """Write bytes; the caller aborts the file on error (this may run on the writer thread)."""
        try:
            self.f.write(data)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ModelsmithError(f"disk full while writing {self.path}; nothing was written") from None
            raise ModelsmithError(f"cannot write {self.path}: {e.strerror}") from None

    def set_late(self, key: str, value: str) -> None:
        """The value of a late metadata key; it must fit the characters reserved for it."""
        placeholder, _ = self.late[key]
        escaped = json.dumps(value)[1:-1]
        if len(escaped) > len(placeholder):
            raise ModelsmithError(f"metadata {key!r} needs {len(escaped)} characters, {len(placeholder)} were reserved")
        self.late[key] = (placeholder, escaped + " " * (len(placeholder) - len(escaped)))

    def add(self, name, tensor):
        expect = self.order[self.next] if self.next < len(self.order) else None
        if name != expect:
            raise RuntimeError(f"tensor {name!r} written out of order (expected {expect!r})")
        dtype, shape = self.entries[name]
        if st_dtype(tensor.dtype) != dtype or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"tensor {name!r}: {tensor.dtype} {tuple(tensor.shape)} does not match the header")
        import torch
        self._wait()
        if tensor.numel():
            t = tensor.detach().contiguous().cpu()
            data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            self._pending = self._pool.submit(self._hash_and_write, data, t)
        self.next += 1

    def _abort(self):
        if self._pool is not None:
            self._pending = None
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.xf is not None:
            self.xf.abort()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._abort()
            return False
        try:
            self._wait()
        except BaseException:
            self._abort()
            raise
        self._pool.shutdown(wait=True)
        if self.next != len(self.order):
            self._abort()
            raise RuntimeError(f"{len(self.order) - self.next} tensors were never written")
        try:
            patched = self.prefix
            if self.hash_key:
                patched = patched.replace(HASH_PLACEHOLDER.encode(), self.sha.hexdigest().encode(), 1)
            for placeholder, value in self.late.values():  # same length: the header size never changes
                patched = patched.replace(placeholder.encode(), (value or "").ljust(len(placeholder)).encode(), 1)
            if patched is not self.prefix:
                self.f.seek(0)
                self.f.write(patched)
        except OSError as e:
            self._abort()
            if e.errno == errno.ENOSPC:
                raise ModelsmithError(f"disk full while writing {self.path}; nothing was written") from None
            raise ModelsmithError(f"cannot write {self.path}: {e.strerror}") from None
        self.xf.publish()  # link (never clobbers) or, when asked, rename over; partial removed on error
        return False


_TRIM = []


def release_freed() -> None:
    """Hand the memory of freed tensors back to the system (glibc keeps freed blocks of a few MB for
    reuse, so a pipeline's peak would otherwise creep up with every tensor size it met). No setting of
    the process changes; elsewhere than glibc this does nothing."""
    if not _TRIM:
        try:
            import ctypes
            _TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)


def prefetched(keys, load):
    """Yield (key, load(key)) with the next key already loading on a second thread.

    Reads release the GIL, so reading key i+1 overlaps the caller's work on key i."""
    from concurrent.futures import ThreadPoolExecutor
    keys = list(keys)
    if not keys:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelsmith-reader") as pool:
        pending = pool.submit(load, keys[0])
        for i, key in enumerate(keys):
            value = pending.result()
            pending = pool.submit(load, keys[i + 1]) if i + 1 < len(keys) else None
            yield key, value
            del value


def drop_page_cache(path):
    """Ask the kernel to forget a file's cached pages (benchmarks start cold and fair)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
