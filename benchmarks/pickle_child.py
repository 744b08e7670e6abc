"""What reading pickles only in a limited child costs on benign files: `inspect` and `convert` of an
SD1-shaped .ckpt (random fp16 weights, real key names) through the child (today's path) vs the same
guard run in this process (the old path, `core.pickle_guard.load_state_dict`), side by side in one
run. Prints wall times (median of N) and the ratio; also the peak memory of the parent.

    python benchmarks/pickle_child.py [SIZE_MB] [N]
"""
import os
import resource
import statistics
import sys
import tempfile
import time

import torch

from modelsmith.core import pickle_child, pickle_guard
from modelsmith.core.convert import run_convert
from modelsmith.core.inspect import inspect_file
from modelsmith.core.stream import AtomicWriter, st_dtype


def make_ckpt(path, size_mb):
    g = torch.Generator().manual_seed(0)
    sd, total, i = {}, 0, 0
    while total < size_mb << 20:
        t = (torch.randn(1280, 1280, generator=g) * 0.02).half()
        sd[f"model.diffusion_model.middle_block.{i}.proj.weight"] = t
        total += t.numel() * 2
        i += 1
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(320, 4, 3, 3, generator=g).half()
    sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.randn(320, 768).half()
    torch.save({"state_dict": sd}, path)


def median(fn, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def old_convert(src, out):
    sd = pickle_guard.load_state_dict(src)
    entries = {k: (st_dtype(v.dtype), tuple(v.shape)) for k, v in sd.items()}
    with AtomicWriter(out, entries) as w:
        for k in entries:
            w.add(k, sd[k])


def main():
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "m.ckpt")
        make_ckpt(ckpt, size_mb)
        print(f"file: {os.path.getsize(ckpt) / 1e6:.0f} MB SD1-shaped .ckpt, median of {n}")
        t_child = median(lambda: inspect_file(ckpt), n)
        t_old = median(lambda: pickle_guard.load_state_dict_table(ckpt), n)
        print(f"inspect in a warm process (torch imported): child {t_child:.2f} s, in-process {t_old:.2f} s, "
              f"ratio {t_child / t_old:.2f}x (the child's own torch import dominates)")
        import subprocess
        cli = [sys.executable, "-m", "modelsmith", "inspect", ckpt]
        old = [sys.executable, "-c", "import sys; from modelsmith.core.pickle_guard import load_state_dict_table; "
                                     "load_state_dict_table(sys.argv[1])", ckpt]
        p_child = median(lambda: subprocess.run(cli, capture_output=True, check=True), n)
        p_old = median(lambda: subprocess.run(old, capture_output=True, check=True), n)
        print(f"inspect as a command (fresh process each): child {p_child:.2f} s, in-process {p_old:.2f} s, "
              f"ratio {p_child / p_old:.2f}x")
        outs = iter(range(10 ** 6))

        def conv_child():
            run_convert(ckpt, os.path.join(d, f"c{next(outs)}.safetensors"), dtype=None, ema="keep")

        def conv_old():
            old_convert(ckpt, os.path.join(d, f"o{next(outs)}.safetensors"))
        c_child = median(conv_child, n)
        c_old = median(conv_old, n)
        print(f"convert: child {c_child:.2f} s, in-process {c_old:.2f} s, ratio {c_child / c_old:.2f}x")
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of the pickle children: {child_peak:.0f} MB; of this process (which also ran the "
              f"in-process baseline): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
