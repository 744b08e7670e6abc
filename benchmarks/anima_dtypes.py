"""Seconds per step of the tiny Anima DiT in bf16, fp16 (fp32 residual path) and fp32 on this
machine's CPU, interleaved side by side for 15 rounds; prints medians and the ratios to fp32.
(On CPU fp16/bf16 matmuls are emulated or slow; the GPU comparison needs a lent GPU machine.)"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from comfy_env import import_comfy  # noqa: E402

import_comfy()
import torch  # noqa: E402


def build(dtype, blocks=4, width=256):
    import comfy.ops
    import tiny
    from modelsmith.compat.anima import AnimaDiT
    from modelsmith.compat.fp16_residual import enable_fp32_residual
    m = AnimaDiT(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                 patch_temporal=1, concat_padding_mask=True, model_channels=width, num_blocks=blocks, num_heads=4,
                 crossattn_emb_channels=64, pos_emb_cls="rope3d", use_adaln_lora=True, adaln_lora_dim=32,
                 rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_enable_fps_modulation=False,
                 adapter={"dim": 64, "source_dim": 64, "layers": 2, "heads": 1},
                 operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)
    tiny.randomize(m, 0)
    m = m.to(dtype).eval()
    if dtype == torch.float16:
        enable_fp32_residual(m)
    return m


def main():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 1, 32, 32, generator=g)  # a 256x256 image's latent
    ctx = torch.randn(1, 512, 64, generator=g)
    t = torch.tensor([0.5])
    models = {name: build(dt) for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))}
    times = {n: [] for n in models}
    with torch.no_grad():
        for name, m in models.items():
            m(x.to(m.x_embedder.proj[1].weight.dtype), t, ctx.to(m.x_embedder.proj[1].weight.dtype))
        for _ in range(15):
            for name, m in models.items():
                dt = m.x_embedder.proj[1].weight.dtype
                s = time.perf_counter()
                m(x.to(dt), t.to(dt), ctx.to(dt))
                times[name].append(time.perf_counter() - s)
    med = {n: statistics.median(v) for n, v in times.items()}
    for n in models:
        print(f"{n:5} {med[n] * 1000:8.1f} ms/step   ratio to fp32 {med[n] / med['fp32']:.2f}")


if __name__ == "__main__":
    main()
