"""Part 1: CPU quantize time of a 4096x4096 bf16 weight: Modelsmith's reference kernels vs
comfy-kitchen's eager backend, interleaved for 9 rounds; prints medians, the speed ratio and whether
the outputs are bit-identical. Targets: bit-identical, nvfp4 >= 2x faster, fp8 not slower.

Part 2: runtime fp8 / nvfp4 weights (ModelsmithModelComputeDtype) on a tiny SDXL-shaped UNet and a
tiny Anima DiT, side by side with the bf16-weight model they come from: denoiser memory (unique
tensor storage, all layers, as a GPU load would move it), bytes per parameter of the quantized
layers, the output's cosine similarity to the bf16-weight model, and CPU seconds per denoiser call
(interleaved, 7 rounds, medians; on the CPU ComfyUI computes bf16 weights in fp32). Targets: <= 1.02
(fp8) and <= 0.57 (nvfp4) bytes/param for quantized layers. With a CUDA GPU it also prints fp8 vs
bf16 linear throughput (the layer's native path vs a plain bf16 matmul).

On a runtime with its own quantized-tensor layers (ComfyUI 0.29: comfy-kitchen QuantizedTensor in
`mixed_precision_ops`), part 2 measures both backends of the node side by side (backend=comfyui and
backend=modelsmith) and prints their memory and CPU-time ratios. `--tiny-only` runs part 2 alone."""
import statistics
import sys
import time
from pathlib import Path

import torch
import comfy_kitchen.backends.eager.quantization as ck

from modelsmith.kernels import fp8, nvfp4


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(rounds=9):
    torch.manual_seed(0)
    x = torch.randn(4096, 4096).bfloat16()
    g = nvfp4.global_scale(x)
    s8 = fp8.per_tensor_scale(x)
    cases = {
        "nvfp4": (lambda: nvfp4.quantize(x, g)[:2], lambda: ck.quantize_nvfp4(x, g)),
        "fp8_e4m3fn": (lambda: (fp8.quantize(x, s8)[0],), lambda: (ck.quantize_per_tensor_fp8(x, s8),)),
    }
    print(f"4096x4096 bf16, {rounds} interleaved rounds, torch threads {torch.get_num_threads()}")
    for name, (ours, theirs) in cases.items():
        to, tt, same = [], [], True
        for _ in range(rounds):
            a, qa = timed(ours)
            b, qb = timed(theirs)
            to.append(a)
            tt.append(b)
            same &= all(torch.equal(u.view(torch.uint8), v.view(torch.uint8)) for u, v in zip(qa, qb))
        mo, mt = statistics.median(to), statistics.median(tt)
        print(f"{name:11} modelsmith {mo * 1000:7.1f} ms   comfy-kitchen eager {mt * 1000:7.1f} ms   "
              f"speed-up {mt / mo:4.2f}x   bit-identical {same}")


def _tensor_parts(t):
    """The tensors that hold `t`'s bytes (a comfy-kitchen QuantizedTensor: its data and scales)."""
    if type(t).__name__ == "QuantizedTensor":
        p = t._params
        return [x for x in (t._qdata, getattr(p, "scale", None), getattr(p, "block_scale", None)) if torch.is_tensor(x)]
    return [t]


def model_bytes(patcher):
    seen, total = set(), 0
    for m in patcher.model.diffusion_model.modules():
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is None:
                continue
            for part in _tensor_parts(t.data if isinstance(t, torch.nn.Parameter) else t):
                st = part.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
    return total


def gpu_linear_throughput():
    if not torch.cuda.is_available():
        print("fp8 vs bf16 linear throughput: no CUDA GPU here (needs a lent GPU machine)")
        return
    from modelsmith.kernels import fp8
    from modelsmith.kernels.qlinear import QuantLinear, compute_path
    dev = torch.device("cuda")
    for m, k, n in ((4096, 4096, 4096), (8192, 3072, 12288)):
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
        qw, scale = fp8.quantize(w, dtype=torch.float8_e4m3fn)
        q = QuantLinear("float8_e4m3fn", qw, scale.reshape(()), None, None, k, n).to(dev)
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        res = {}
        for name, fn in (("bf16", lambda: torch.nn.functional.linear(x, w)), ("fp8", lambda: q(x))):
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                fn()
            torch.cuda.synchronize()
            res[name] = (time.perf_counter() - t) / 50
        tflops = {k2: 2 * m * k * n / v / 1e12 for k2, v in res.items()}
        print(f"GPU {torch.cuda.get_device_name()} {m}x{k}x{n}: bf16 {tflops['bf16']:.0f} TFLOP/s, fp8 "
              f"{tflops['fp8']:.0f} TFLOP/s ({compute_path('float8_e4m3fn', dev)}), ratio {res['bf16'] / res['fp8']:.2f}x")
    del fp8


def tiny_models(rounds=7):
    import asyncio
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from comfy_env import import_comfy
    import_comfy()

    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    import precision_models as pm
    from modelsmith.nodes.precision import ModelsmithModelComputeDtype
    from modelsmith.compat.quantized import core_quant_ops
    node = ModelsmithModelComputeDtype()
    backends = ["modelsmith"] + (["comfyui"] if core_quant_ops("float8_e4m3fn", "cpu") is not None else [])
    print(f"runtime quantization backends measured side by side: {', '.join(backends)}"
          + ("" if len(backends) > 1 else " (this ComfyUI has no quantized-tensor layers)"))
    for family, base in (("sdxl", pm.sdxl_bf16()), ("anima", pm.anima_bf16(blocks=8))):
        models = {"bf16": base}
        stats = {}
        for dt in ("fp8_e4m3fn", "nvfp4"):
            for be in backends:
                m, report = node.apply(base, dt, backend=be)["result"]
                models[(dt, be)] = m
                stats[(dt, be)] = report
        ref = pm.denoise(base, family)
        times = {k: [] for k in models}
        outs = {}
        for _ in range(rounds):
            for name, m in models.items():
                t = time.process_time()
                outs[name] = pm.denoise(m, family)
                times[name].append(time.process_time() - t)
        b0 = model_bytes(base)
        t0 = statistics.median(times["bf16"])
        print(f"== tiny {family}: bf16 denoiser {b0 / 2**20:.2f} MiB, {t0 * 1000:.1f} ms CPU/call")
        for key in [k for k in models if k != "bf16"]:
            dt, be = key
            b = model_bytes(models[key])
            tm = statistics.median(times[key])
            print(f"  {dt:10} {be:10} {b / 2**20:6.2f} MiB ({b / b0:.3f}x of bf16)  cosine {pm.cosine(ref, outs[key]):.5f}  "
                  f"{tm * 1000:.1f} ms CPU/call ({tm / t0:.2f}x bf16)")
        if len(backends) > 1:
            for dt in ("fp8_e4m3fn", "nvfp4"):
                a, c = (dt, "comfyui"), (dt, "modelsmith")
                print(f"  {dt}: ComfyUI layers / Modelsmith layers: memory {model_bytes(models[a]) / model_bytes(models[c]):.3f}x, "
                      f"CPU time {statistics.median(times[a]) / statistics.median(times[c]):.2f}x")
    gpu_linear_throughput()


if __name__ == "__main__":
    if "--tiny-only" not in sys.argv:
        main()
    tiny_models()
