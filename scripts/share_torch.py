"""Share one torch install between the runtimes' virtual environments by hard links.

    python share_torch.py SRC_SITE_PACKAGES DST_SITE_PACKAGES dist [dist ...]

Links every file the named distributions (and what they require, transitively) list in their
RECORD from SRC into DST, so pip in DST sees them installed and the ~6 GB of torch, triton and the
CUDA libraries take disk once. A later `pip uninstall` in DST only removes DST's links; SRC keeps
its files. Files outside site-packages (console scripts with SRC's shebang) are not linked.
A distribution already present in DST is left alone.
"""
from __future__ import annotations

import csv
import os
import re
import sys
from importlib import metadata
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _named(path: Path):
    """Installed distributions under `path` that have a name (a half-removed one has none)."""
    for d in metadata.distributions(path=[str(path)]):
        name = d.metadata["Name"] if d.metadata is not None else None
        if name:
            yield _norm(name), d


def _closure(src: Path, roots: list[str]) -> dict[str, metadata.Distribution]:
    dists = dict(_named(src))
    out: dict[str, metadata.Distribution] = {}
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in out or name not in dists:
            continue
        out[name] = dists[name]
        for req in dists[name].requires or []:
            if "extra ==" in req:
                continue
            todo.append(_norm(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]))
    return out


def main(argv: list[str]) -> int:
    src, dst, roots = Path(argv[1]).resolve(), Path(argv[2]).resolve(), argv[3:]
    present = {name for name, _ in _named(dst)}
    linked = 0
    for name, dist in sorted(_closure(src, roots).items()):
        if name in present:
            continue
        record = Path(dist._path) / "RECORD"  # type: ignore[attr-defined]
        with open(record, newline="") as f:
            for row in csv.reader(f):
                rel = row[0]
                if not rel or rel.startswith("..") or os.path.isabs(rel):
                    continue
                s, d = src / rel, dst / rel
                if not s.is_file() or d.exists():
                    continue
                d.parent.mkdir(parents=True, exist_ok=True)
                os.link(s, d)
                linked += 1
        print(f"[setup]   shared {dist.metadata['Name']} {dist.version}")
    print(f"[setup]   {linked} files hard-linked from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
