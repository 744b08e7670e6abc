"""The loaders add nothing (issue #30 point 6): a 2.13 GB SD1 fp16 checkpoint (real names and shapes,
random data) loaded by the pack's Load Checkpoint, Right Settings and by core's CheckpointLoaderSimple,
each in its own process, alternating, with the file out of the page cache (cold) and in it (warm).
Prints the medians of the load call itself (imports excluded) and the ratio. Target: at most 1.05x.

    python benchmarks/loaders.py [--rounds 5]

Not measured here: the 4.18 GB Anima-shaped file of the issue (its full text encoder and VAE would be
needed beside it)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from comfy_env import comfy_path, import_comfy  # noqa: E402

RUNNER = """
import sys, os, time, json
sys.path.insert(0, COMFY_PATH)
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy.model_management, folder_paths
folder_paths.add_model_folder_path("checkpoints", os.path.dirname(sys.argv[2]), is_default=True)
import nodes
name = os.path.basename(sys.argv[2])
if sys.argv[1] == "modelsmith":
    from modelsmith.nodes.loaders import ModelsmithCheckpointLoader
    load = lambda: ModelsmithCheckpointLoader().load(name)
else:
    load = lambda: nodes.CheckpointLoaderSimple().load_checkpoint(name)
t = time.perf_counter()
out = load()
print("RESULT " + json.dumps({"load_s": time.perf_counter() - t}))
"""


def run(which, path, cold):
    from modelsmith.core.stream import drop_page_cache
    if cold:
        drop_page_cache(path)
    code = RUNNER.replace("COMFY_PATH", repr(str(comfy_path())))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, which, str(path)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads([l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])["load_s"], wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import_comfy()
    from tools import make_input
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        path = make_input(Path(d) / "sd1.safetensors", 3)
        subprocess.run(["sync"], check=True)
        print(f"{path.stat().st_size / 1e9:.2f} GB SD1 fp16 checkpoint, {args.rounds} alternating rounds each")
        for cold in (True, False):
            if not cold:
                run("core", path, False)  # warm the page cache
            res = {"core": [], "modelsmith": []}
            for _ in range(args.rounds):
                for which in ("core", "modelsmith"):
                    res[which].append(run(which, path, cold))
            med = {k: statistics.median(x[0] for x in v) for k, v in res.items()}
            walls = {k: statistics.median(x[1] for x in v) for k, v in res.items()}
            label = "cold (dropped from the page cache)" if cold else "warm (in the page cache)"
            print(f"-- {label}")
            print(f"core CheckpointLoaderSimple        load {med['core']:6.2f} s  (process {walls['core']:5.2f} s)")
            print(f"Load Checkpoint, Right Settings    load {med['modelsmith']:6.2f} s  (process {walls['modelsmith']:5.2f} s)")
            print(f"ratio: {med['modelsmith'] / med['core']:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
