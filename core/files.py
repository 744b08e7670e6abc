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


def safe_filename(name: str) -> str:
    """ASCII, no spaces, no path parts: the seed guide's advice for distributed model files."""
    name = os.path.basename(name.replace("\\", "/"))
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    name = re.sub(r"\s+", "_", name)
    name = re.sub(r"[^A-Za-z0-9._+-]", "", name).lstrip(".")
    return name or "model.safetensors"
