"""File naming and atomic writing."""
from __future__ import annotations

import os
import re
import unicodedata


def safe_filename(name: str) -> str:
    """ASCII, no spaces, no path parts: the seed guide's advice for distributed model files."""
    name = os.path.basename(name.replace("\\", "/"))
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    name = re.sub(r"\s+", "_", name)
    name = re.sub(r"[^A-Za-z0-9._+-]", "", name).lstrip(".")
    return name or "model.safetensors"
