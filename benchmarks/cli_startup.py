"""CLI start-up: `python -m modelsmith inspect FILE` against a bare `python -c pass`, measured side by
side (interleaved runs, medians), printed as a ratio, with Python's bytecode cache (its default) and
without it. Target (issues #19, #30): at most 1.5x bare Python with the default.

    python benchmarks/cli_startup.py [FILE] [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    path = args.file
    if path is None:  # a small real safetensors file: a header and one tensor
        import json
        import struct
        header = json.dumps({"model.diffusion_model.input_blocks.0.0.weight":
                             {"dtype": "F16", "shape": [320, 4, 3, 3], "data_offsets": [0, 23040]}}).encode()
        fd, path = tempfile.mkstemp(suffix=".safetensors")
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + bytes(23040))
    cmds = {"bare python": [sys.executable, "-c", "pass"],
            "modelsmith inspect": [sys.executable, "-m", "modelsmith", "inspect", path]}
    # Python's default keeps compiled modules in __pycache__ (what a user's ComfyUI Python does); some
    # setups turn that off (PYTHONDONTWRITEBYTECODE=1), and then every start compiles every module
    default_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for label, env in (("bytecode cache (Python's default)", default_env),
                       ("no bytecode cache (PYTHONDONTWRITEBYTECODE=1, an empty cache prefix)",
                        dict(default_env, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=tempfile.mkdtemp()))):
        for c in cmds.values():  # warm the page cache and (where allowed) the bytecode caches
            subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times = {k: [] for k in cmds}
        for _ in range(args.runs):
            for k, c in cmds.items():
                t = time.perf_counter()
                subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"-- {label}")
        for k, v in med.items():
            print(f"{k:20s} median {v * 1000:7.1f} ms over {args.runs} alternating runs")
        target = " (target <= 1.5x)" if env is default_env else ""
        print(f"ratio modelsmith inspect / bare python: {med['modelsmith inspect'] / med['bare python']:.2f}x{target}")

if __name__ == "__main__":
    main()
