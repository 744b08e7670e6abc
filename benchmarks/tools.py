"""Merge of two ~2.13 GB SD1-sized fp16 checkpoints (real names and shapes, random data):
Modelsmith's streaming merge vs ComfyUI's own path (CheckpointLoaderSimple x2, ModelMergeSimple,
CheckpointSave) vs `cp` + sync of the same bytes. Each runs in its own process with its inputs dropped from the page cache first; prints wall time,
peak RSS (file-backed pages of mapped inputs included) and the ratios.
Targets: peak RSS <= 0.15x ComfyUI's and < 1 GB; wall <= 0.3x ComfyUI's.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from comfy_env import comfy_path, import_comfy  # noqa: E402

FOOTER = """
import resource, json, time
print("RESULT " + json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

MODELSMITH = """
import sys
from modelsmith.core.merge import Recipe, run_merge
run_merge(Recipe(method="weighted_sum", inputs=[sys.argv[1], sys.argv[2]], alpha=0.5), sys.argv[3])
""" + FOOTER

COMFY = """
import sys, asyncio, os
sys.path.insert(0, COMFY_PATH)
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy.model_management, utils.extra_config, folder_paths
folder_paths.add_model_folder_path("checkpoints", os.path.dirname(sys.argv[1]), is_default=True)
folder_paths.set_output_directory(os.path.dirname(sys.argv[3]))
import nodes
from comfy_extras.nodes_model_merging import ModelMergeSimple, CheckpointSave
m1, c1, v1 = nodes.CheckpointLoaderSimple().load_checkpoint(os.path.basename(sys.argv[1]))[:3]
m2, c2, v2 = nodes.CheckpointLoaderSimple().load_checkpoint(os.path.basename(sys.argv[2]))[:3]
m = ModelMergeSimple().merge(m1, m2, 0.5)[0]
CheckpointSave().save(m, c1, v1, "comfy_merge", prompt=None, extra_pnginfo=None)
""" + FOOTER


def make_input(path, seed):
    import numpy as np
    import corpus
    from modelsmith.core.safetensors_io import build_header_bytes
    table = corpus.sd_checkpoint("sd1")
    prefix, size = build_header_bytes(table)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(prefix)
        left = size
        while left:
            n = min(left, 64 << 20) // 2 * 2
            vals = rng.integers(0x2000, 0x3800, size=n // 2, dtype=np.uint16)  # finite fp16 in (0, 0.5)
            vals |= (rng.integers(0, 2, size=n // 2, dtype=np.uint16) << 15)
            f.write(vals.tobytes()[:n])
            left -= n
    return path


def run(code, *args, cold=()):
    from modelsmith.core.stream import drop_page_cache
    for p in cold:  # every contender starts with its inputs out of the page cache
        drop_page_cache(p)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads([l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    return wall, res["maxrss_mb"]


def main():
    import_comfy()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        d = Path(d)
        a, b = make_input(d / "a.safetensors", 1), make_input(d / "b.safetensors", 2)
        print(f"inputs: 2 x {a.stat().st_size / 1e9:.2f} GB SD1 fp16")
        subprocess.run(["sync"])
        ms_wall, ms_rss = run(MODELSMITH, a, b, d / "ms_merge.safetensors", cold=(a, b))
        cf_wall, cf_rss = run(COMFY.replace("COMFY_PATH", repr(str(comfy_path()))), a, b, d / "out" / "x", cold=(a, b))
        from modelsmith.core.stream import drop_page_cache
        drop_page_cache(a)
        t = time.perf_counter()
        subprocess.run(["cp", str(a), str(d / "copy.safetensors")], check=True)
        subprocess.run(["sync"], check=True)
        cp_wall = time.perf_counter() - t
        print(f"{'':24} {'wall s':>8} {'peak RSS MB':>12}")
        print(f"{'Modelsmith merge':24} {ms_wall:8.2f} {ms_rss:12.0f}")
        print(f"{'ComfyUI load+merge+save':24} {cf_wall:8.2f} {cf_rss:12.0f}")
        print(f"{'cp + sync':24} {cp_wall:8.2f}")
        print(f"ratios vs ComfyUI: wall {ms_wall / cf_wall:.2f}x (target <= 0.3), peak RSS {ms_rss / cf_rss:.3f}x "
              f"(target <= 0.15, and < 1024 MB)")
        print(f"Modelsmith wall vs cp+sync: {ms_wall / cp_wall:.1f}x")


if __name__ == "__main__":
    main()
