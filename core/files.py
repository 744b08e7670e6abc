"""File naming and atomic writing."""
from __future__ import annotations

import os
import re
import stat
import unicodedata

from .errors import ModelsmithError


def check_regular_file(path: str) -> os.stat_result:
    """Refuse, with a clear error, anything that is not a readable regular file: a missing path, a
    folder, a symlink loop, or a pipe/socket/device (opening a FIFO would block forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelsmithError(f"{path}: file not found") from None
    except OSError as e:
        raise ModelsmithError(f"{path}: cannot open ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelsmithError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelsmithError(f"{path}: not a regular file (a pipe, socket or device); not reading it")
    return st


def _ascii_part(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"\s+", "_", text)
    return re.sub(r"[^A-Za-z0-9._+-]", "", text).strip("._")


def safe_filename(name: str) -> str:
    """ASCII, no spaces, no path parts: the seed guide's advice for distributed model files. The
    extension is kept, and a name with nothing ASCII left (a Japanese-only name such as `\u65e5\u672c.safetensors`) becomes `model-<8 hex
    digits of the original name>` plus its extension, so distinct names stay distinct and never empty."""
    import hashlib
    name = os.path.basename(name.replace("\\", "/"))
    stem, ext = os.path.splitext(name)
    if not stem and ext:  # ".safetensors" alone: a name that is only an extension
        stem, ext = ext, ""
    ext = "." + _ascii_part(ext) if _ascii_part(ext) else ""
    clean = _ascii_part(stem)
    if not clean:
        clean = "model-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return clean + ext


# ----------------------------------------------------------------------------------------------
# Writing: every file the pack creates goes through here

NAME_MAX = 255
_PARTIAL = re.compile(r"^\.modelsmith-[0-9a-f]{12}-(\d+)-[0-9a-f]{8}\.partial$")


def _open_dir(folder: str) -> int:
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ModelsmithError(f"{folder}: output folder not found") from None
    except OSError as e:
        raise ModelsmithError(f"{folder}: cannot use it as the output folder ({e.strerror})") from None


def _write_error(path: str, e: OSError) -> ModelsmithError:
    import errno
    if e.errno == errno.ENOSPC:
        return ModelsmithError(f"disk full while writing {path}; nothing was written (free some space)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ModelsmithError(f"cannot write into {os.path.dirname(path)}: the folder is read-only or not yours "
                               f"({e.strerror}); choose another output folder")
    if e.errno == errno.ENAMETOOLONG:
        return ModelsmithError(f"{os.path.basename(path)}: the name is too long for this file system; choose a shorter one")
    return ModelsmithError(f"cannot write {path}: {e.strerror}")


def check_writable_folder(folder: str) -> None:
    """A clear error up front for a folder that cannot take a new file (read-only file system, no
    permission), before free space is judged or any work is done."""
    import errno
    if not os.path.isdir(folder):
        raise ModelsmithError(f"{folder}: output folder not found")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _write_error(os.path.join(folder, "x"), OSError(errno.EACCES, "read-only or not writable"))


class ExclusiveFile:
    """A new file, written under a hidden partial name and published atomically.

    The folder is opened once (O_DIRECTORY) and every later step works relative to that handle, so a
    folder swapped for a symlink meanwhile changes nothing. The partial is created with
    O_CREAT|O_EXCL|O_NOFOLLOW under a random name (a planted file or symlink of that name makes the
    creation fail, never followed). Publishing links the partial to the final name (fails if the name
    exists: never clobbers) or, only when `overwrite` was asked for, renames over it (which replaces
    a symlink itself, not its target). On error the partial is removed."""

    def __init__(self, path: str, overwrite: bool = False):
        import hashlib
        import secrets
        self.path = os.path.abspath(os.fspath(path))
        self.folder, self.name = os.path.split(self.path)
        if len(self.name.encode()) > NAME_MAX:
            raise ModelsmithError(f"{self.name[:40]}...: the name is {len(self.name.encode())} bytes, more than the "
                                  f"{NAME_MAX} a file system allows; choose a shorter one")
        self.overwrite = overwrite
        self.dfd = _open_dir(self.folder)
        tag = hashlib.sha1(self.name.encode()).hexdigest()[:12]
        self.tmp_name = f".modelsmith-{tag}-{os.getpid()}-{secrets.token_hex(4)}.partial"
        self.f = None
        clean_stale_partials(self.folder, dir_fd=self.dfd)
        if not overwrite and _exists(self.name, self.dfd):
            self.close_dir()
            raise ModelsmithError(f"{self.path} exists; choose another name or allow overwrite")
        try:
            fd = os.open(self.tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self.dfd)
        except OSError as e:
            self.close_dir()
            raise _write_error(self.path, e) from None
        self.f = os.fdopen(fd, "wb")

    @property
    def tmp(self):
        return os.path.join(self.folder, self.tmp_name)

    def publish(self):
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            if self.overwrite:
                os.replace(self.tmp_name, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
            else:
                os.link(self.tmp_name, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd, follow_symlinks=False)
                os.unlink(self.tmp_name, dir_fd=self.dfd)
            os.fsync(self.dfd)
        except FileExistsError:
            self.abort()
            raise ModelsmithError(f"{self.path} appeared while writing; not overwritten") from None
        except OSError as e:
            self.abort()
            raise _write_error(self.path, e) from None
        self.close_dir()

    def abort(self):
        try:
            if self.f is not None and not self.f.closed:
                self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp_name, dir_fd=self.dfd)
        except OSError:
            pass
        self.close_dir()

    def close_dir(self):
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None


def _exists(name: str, dfd: int) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def write_new_text(path: str, text: str, overwrite: bool = False) -> str:
    """A small text file (a recipe, a cache) created exclusively and published atomically."""
    return write_new_bytes(path, text.encode(), overwrite)


def write_new_bytes(path: str, data: bytes, overwrite: bool = False) -> str:
    """A small file (a fetched image) created exclusively and published atomically."""
    f = ExclusiveFile(path, overwrite=overwrite)
    try:
        f.f.write(data)
    except OSError as e:
        f.abort()
        raise _write_error(f.path, e) from None
    f.publish()
    return f.path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(folder: str, dir_fd: int | None = None) -> list[str]:
    """Remove partial files of the pack's own naming whose writing process is gone (a crash or kill -9
    mid-write); returns their names (logged). A partial of a live process, or any other file, stays."""
    import logging
    removed = []
    try:
        names = os.listdir(dir_fd if dir_fd is not None else folder)
    except OSError:
        return removed
    for name in names:
        m = _PARTIAL.match(name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False) if dir_fd is not None else \
                os.stat(os.path.join(folder, name), follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            if dir_fd is not None:
                os.unlink(name, dir_fd=dir_fd)
            else:
                os.unlink(os.path.join(folder, name))
            removed.append(name)
            logging.getLogger("modelsmith").warning(
                "removed %s (%.1f MB): a partial file left by an interrupted Modelsmith run (process %s is gone)",
                os.path.join(folder, name), st.st_size / 1e6, m.group(1))
        except OSError:
            continue
    return removed
