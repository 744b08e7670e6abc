"""Inspection speed: Modelsmith's header-only inspection vs ComfyUI's own path
(`comfy.utils.load_torch_file` + `model_detection.model_config_from_unet`), on a 2.13 GB SD1-sized
and a 6.9 GB SDXL-sized file (sparse, real names and shapes), per file in one process and as whole
processes. Prints times, ratios and bytes read. Targets: >= 10x per file, < 2 MB read, >= 10x per process.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from comfy_env import comfy_path, import_comfy  # noqa: E402

import_comfy()
import corpus  # noqa: E402
import comfy.model_detection  # noqa: E402
import comfy.utils  # noqa: E402
from modelsmith.core.inspect import inspect_file  # noqa: E402


def median_time(fn, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def comfy_path_inspect(path):
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    return comfy.model_detection.model_config_from_unet(sd, prefix)


COMFY_PROC = """
import sys; sys.path.insert(0, {cp!r})
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy.utils, comfy.model_detection
sd = comfy.utils.load_torch_file({path!r}, safe_load=True)
print(comfy.model_detection.model_config_from_unet(sd, comfy.model_detection.unet_prefix_from_state_dict(sd)))
"""


def proc_time(cmd, n=3):
    def run():
        subprocess.run(cmd, check=True, capture_output=True)
    return median_time(run, n)


def main():
    with tempfile.TemporaryDirectory() as d:
        files = {"sd1 (2.13 GB)": Path(d) / "sd1.safetensors", "sdxl (6.9 GB)": Path(d) / "sdxl.safetensors"}
        corpus.write(files["sd1 (2.13 GB)"], corpus.sd_checkpoint("sd1"))
        corpus.write(files["sdxl (6.9 GB)"], corpus.sd_checkpoint("sdxl"))
        print("per file, in one process (medians of 15 interleaved rounds; ratio = median of paired ratios)")
        print(f"{'file':16} {'size GB':>8} {'modelsmith ms':>14} {'comfyui ms':>11} {'ratio':>7} {'MS bytes read':>14}")
        for label, p in files.items():
            rep = inspect_file(p)
            assert comfy_path_inspect(p) is not None
            # interleaved rounds; the paired ratio's median is what counts on a noisy 2-core machine
            ours_t, theirs_t, ratios = [], [], []
            for _ in range(15):
                o = median_time(lambda: inspect_file(p), 3)
                t = median_time(lambda: comfy_path_inspect(p), 1)
                ours_t.append(o)
                theirs_t.append(t)
                ratios.append(t / o)
            ours, theirs = statistics.median(ours_t), statistics.median(theirs_t)
            print(f"{label:16} {os.path.getsize(p) / 1e9:8.2f} {ours * 1e3:14.2f} {theirs * 1e3:11.1f} "
                  f"{statistics.median(ratios):6.1f}x {rep['file']['bytes_read']:14,d}")
        print("\nwhole processes (median of 3):")
        for label, p in files.items():
            ours = proc_time([sys.executable, "-m", "modelsmith", "inspect", str(p), "--json"])
            theirs = proc_time([sys.executable, "-c", COMFY_PROC.format(cp=str(comfy_path()), path=str(p))])
            print(f"{label:16} modelsmith CLI {ours:6.2f} s   ComfyUI path {theirs:6.2f} s   ratio {theirs / ours:5.1f}x")


if __name__ == "__main__":
    main()
