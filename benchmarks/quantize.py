"""CPU quantize time of a 4096x4096 bf16 weight: Modelsmith's reference kernels vs comfy-kitchen's
eager backend, interleaved for 9 rounds; prints medians, the speed ratio and whether the outputs
are bit-identical. Targets: bit-identical, nvfp4 >= 2x faster, fp8 not slower."""
import statistics
import time

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


if __name__ == "__main__":
    main()
