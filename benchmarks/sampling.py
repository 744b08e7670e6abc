"""Seconds per step: ModelsmithSDXLSampler vs the same core graph
(ModelSamplingDiscrete(v_prediction, zsnr) + RescaleCFG + KSampler) on a tiny v-pred+ZTSNR SDXL-shaped
model, interleaved for 20+ rounds in one process. Prints the median of the paired ratios (target <= 1.02).
"""
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from comfy_env import import_comfy  # noqa: E402

folder_paths = import_comfy()
import nodes  # noqa: E402

ROUNDS, STEPS, SIZE = 24, 8, 128


def main():
    import tiny
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    with tempfile.TemporaryDirectory() as d:
        folder_paths.add_model_folder_path("checkpoints", d, is_default=True)
        tiny.save(Path(d) / "bench_vpred.safetensors", "sdxl", seed=5, markers=("v_pred", "ztsnr"))
        N = nodes.NODE_CLASS_MAPPINGS
        loader = N["ModelsmithCheckpointLoader"]()
        model, clip, _, settings = loader.load("bench_vpred.safetensors", "auto")
        plain, *_ = loader.load("bench_vpred.safetensors", "eps")
        pos = N["CLIPTextEncode"]().encode(clip, "1girl")[0]
        neg = N["CLIPTextEncode"]().encode(clip, "worst quality")[0]

        def ours():
            return N["ModelsmithSDXLSampler"]().sample(
                model, pos, neg, "auto", "custom", SIZE, SIZE, STEPS, 4.5, "auto", 0.7, "euler", "normal", 1, 1.0,
                settings=settings)["result"][0]["samples"]

        def core():
            m = N["ModelSamplingDiscrete"]().patch(plain, "v_prediction", True)[0]
            m = N["RescaleCFG"]().patch(m, 0.7)[0]
            latent = N["EmptyLatentImage"]().generate(SIZE, SIZE, 1)[0]
            return N["KSampler"]().sample(m, 1, STEPS, 4.5, "euler", "normal", pos, neg, latent, 1.0)[0]["samples"]

        a, b = ours(), core()  # warm-up, and the two must agree
        print(f"max |ours - core| = {float((a - b).abs().max()):.3g} (bit-identical: {bool((a == b).all())})")
        ratios, t_ours, t_core = [], [], []
        for r in range(ROUNDS):
            pair = []
            for fn in ((ours, core) if r % 2 == 0 else (core, ours)):
                t = time.perf_counter()
                fn()
                pair.append((fn, (time.perf_counter() - t) / STEPS))
            d_ = dict(pair)
            t_ours.append(d_[ours])
            t_core.append(d_[core])
            ratios.append(d_[ours] / d_[core])
        print(f"rounds {ROUNDS}, steps {STEPS}, {SIZE}x{SIZE}")
        print(f"seconds/step: Modelsmith {statistics.median(t_ours):.4f}  core graph {statistics.median(t_core):.4f}")
        print(f"median paired ratio (Modelsmith / core): {statistics.median(ratios):.3f}  (target <= 1.02); "
              f"range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
