"""Model Doctor scan speed on a folder of 1,000 model files (sparse header-only files with real names
and shapes: SD1/SDXL UNets, Anima DiTs, LoRAs), against ComfyUI's own folder listing of the same
folder (folder_paths.get_filename_list: what every loader node does), side by side in one run.
Targets (issue #15): cold scan under 2 s, rescan under 0.2 s on a 2-core machine.

    python benchmarks/doctor_scan.py [--files 1000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def make_folder(root, n):
    from modelsmith.core.safetensors_io import write_sparse
    kinds = {"checkpoints": [], "diffusion_models": [], "loras": []}
    for k in kinds:
        os.makedirs(os.path.join(root, k), exist_ok=True)
    unet = {f"model.diffusion_model.input_blocks.{i}.0.weight": ("F16", (320, 4 if i == 0 else 320, 3, 3)) for i in range(12)}
    unet["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = ("F16", (320, 768))
    sdxl = dict(unet)
    sdxl["model.diffusion_model.label_emb.0.0.weight"] = ("F16", (1280, 2816))
    sdxl["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] = ("F16", (640, 2048))
    dit = {f"net.blocks.{i}.mlp.layer1.weight": ("BF16", (8192, 2048)) for i in range(28)}
    dit.update({"net.x_embedder.proj.1.weight": ("BF16", (2048, 68)), "net.llm_adapter.embed.weight": ("BF16", (32128, 1024)),
                "net.llm_adapter.blocks.0.cross_attn.q_proj.weight": ("BF16", (1024, 1024)),
                "net.llm_adapter.blocks.0.cross_attn.k_proj.weight": ("BF16", (1024, 1024))})
    lora = {}
    for i in range(28):
        lora[f"lora_unet_blocks_{i}_self_attn_q_proj.lora_down.weight"] = ("BF16", (16, 2048))
        lora[f"lora_unet_blocks_{i}_self_attn_q_proj.lora_up.weight"] = ("BF16", (2048, 16))
    tables = [("checkpoints", unet), ("checkpoints", sdxl), ("diffusion_models", dit), ("loras", lora)]
    for i in range(n):
        kind, t = tables[i % len(tables)]
        write_sparse(os.path.join(root, kind, f"model_{i:04d}.safetensors"), t)
    return {k: [os.path.join(root, k)] for k in kinds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import comfy_env
    folder_paths = comfy_env.import_comfy()
    from modelsmith.core import doctor
    with tempfile.TemporaryDirectory() as root:
        folders = make_folder(root, args.files)
        for k, paths in folders.items():  # only this folder: the runtime's own models folder is not measured
            folder_paths.folder_names_and_paths[k] = ([paths[0]], folder_paths.folder_names_and_paths[k][1])
        cache_file = os.path.join(root, "cache", "doctor.json")
        cold, warm, listing = [], [], []
        for _ in range(args.rounds):
            if os.path.exists(cache_file):
                os.unlink(cache_file)
            t = time.perf_counter()
            entries = doctor.scan(folders, doctor.Cache(cache_file))
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            again = doctor.scan(folders, doctor.Cache(cache_file))
            warm.append(time.perf_counter() - t)
            folder_paths.filename_list_cache.clear()
            t = time.perf_counter()
            names = sum(len(folder_paths.get_filename_list(k)) for k in folders)
            listing.append(time.perf_counter() - t)
        assert len(entries) == len(again) == names == args.files, (len(entries), len(again), names)
        c, w, ls = statistics.median(cold), statistics.median(warm), statistics.median(listing)
        print(f"{args.files} files, medians of {args.rounds} rounds")
        print(f"ComfyUI folder listing (get_filename_list, uncached): {ls * 1000:8.1f} ms")
        print(f"Model Doctor cold scan (every header read):           {c * 1000:8.1f} ms  = {c / ls:6.1f}x the listing  (target < 2000 ms)")
        print(f"Model Doctor rescan (cache by path, size, mtime):      {w * 1000:8.1f} ms  = {w / ls:6.1f}x the listing  (target < 200 ms)")


if __name__ == "__main__":
    main()
