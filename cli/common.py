"""Helpers the command groups share: progress bars, output names, small text files, errors."""
from __future__ import annotations

import os
import sys


def progress(desc):
    """A progress callback (done, total): a bar redrawn in place on a terminal; in a log (stderr not a
    terminal) plain lines every 10%, no carriage returns."""
    state = {"last": -1}
    tty = sys.stderr.isatty()

    def cb(done, total):
        pct = int(100 * done / max(1, total))
        if not tty:
            if pct // 10 != state["last"] // 10 or (done == total and state["last"] != 100):
                state["last"] = pct
                print(f"{desc}: {pct}% ({done}/{total} tensors)", file=sys.stderr, flush=True)
            return
        if pct != state["last"]:
            state["last"] = pct
            bar = "#" * (pct // 4)
            print(f"\r{desc} [{bar:<25}] {pct:3d}% ({done}/{total} tensors)", end="", file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)
    return cb


def output_path(path, keep_name):
    """The output path with a safe file name (ASCII, no spaces) unless the user keeps theirs."""
    from ..core.files import safe_filename
    folder, name = os.path.split(path)
    if not keep_name:
        safe = safe_filename(name)
        if not safe.lower().endswith(".safetensors"):
            safe = os.path.splitext(safe)[0] + ".safetensors"
        if safe != name:
            print(f"note: writing {safe} (ASCII, no spaces); use --keep-name to keep {name!r}", file=sys.stderr)
        name = safe
    return os.path.join(folder, name)


def read_small_text(path: str, what: str, limit: int = 1 << 20) -> str:
    """A small UTF-8 file (a recipe), bounded in size, every failure one sentence."""
    from ..core.errors import ModelsmithError
    from ..core.files import check_regular_file
    st = check_regular_file(path)
    if st.st_size > limit:
        raise ModelsmithError(f"{path}: {st.st_size} bytes is too large for a {what} (at most {limit})")
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelsmithError(f"{path}: not a {what} (not UTF-8 text)") from None
    except OSError as e:
        raise ModelsmithError(f"{path}: cannot read it ({e.strerror})") from None


def raise_error(msg):
    """Raise the pack's error (the CLI turns it into one sentence and exit 2)."""
    from ..core.errors import ModelsmithError
    raise ModelsmithError(msg)
