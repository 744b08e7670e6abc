"""Per-layer quantization formats chosen by measured error, and the quality report of a quantization.

The error of a layer in a format is the relative output error on activations: ||X Wq^T - X W^T|| /
||X W^T|| for X of 64 rows of standard normal values (seeded by the layer's input width, the same for
every format and run), Wq the weight quantized and dequantized by the pack's kernels. A plan gives
each eligible layer one format:

- by an error budget (`max_error`): the smallest candidate whose error is within it, else the layer
  stays in high precision;
- by a size budget (`max_bytes`, the whole file): every layer starts in its smallest candidate, then
  the upgrades that remove the most error per byte are taken (greedy, in that order) while the file
  stays within the budget.

The family's keep-in-high-precision layers never enter a plan (core/quantize.py drops them first)."""
from __future__ import annotations

import heapq
import json
import math

ROWS = 64  # activation rows per measurement


def _activations(cols: int, cache: dict):
    import torch
    if cols not in cache:
        g = torch.Generator().manual_seed(1000 + cols)
        cache[cols] = torch.randn(ROWS, cols, generator=g)
    return cache[cols]


def output_error(w, fmt: str, cache: dict, x=None) -> float:
    """Relative output error of weight `w` stored in format `fmt` (a `comfy_quant` name), on the rows
    of `x` (the inputs the layer saw while sampling a calibration prompt) or on random activations."""
    from .quantize import dequantized_rows, quantize_layer
    if x is None or x.shape[-1] != w.shape[1]:
        x = _activations(w.shape[1], cache)
    return relative_error(w, dequantized_rows(quantize_layer(w, fmt), fmt), x)


def relative_error(w, rows, x) -> float:
    """||x (Wq - W)^T|| / ||x W^T||, with `rows(r0, r1)` giving float32 rows of Wq: row slices of ~4 M
    values at a time, so memory holds a slice, not a second copy of the layer."""
    num = den = 0.0
    step = max(1, (4 << 20) // w.shape[1])
    for r0 in range(0, w.shape[0], step):
        r1 = min(r0 + step, w.shape[0])
        wf = w[r0:r1].float()
        num += float((x @ (rows(r0, r1) - wf).T).square().sum())
        den += float((x @ wf.T).square().sum())
    return (num / max(den, 1e-60)) ** 0.5


def layer_bytes(fmt: str | None, shape, source_dtype: str) -> int:
    """Bytes a weight of `shape` takes in `fmt` (None: kept as it is, in `source_dtype`)."""
    from .quantize import file_entries
    from .safetensors_io import DTYPE_BITS
    if fmt is None:
        return math.prod(shape) * DTYPE_BITS[source_dtype] // 8
    return sum(math.prod(s) * DTYPE_BITS[dt] // 8 for dt, s in file_entries(fmt, shape).values())


def choose_by_error(errors: dict, max_error: float, sizes: dict) -> dict:
    """layer -> the smallest format whose error is within `max_error`, or None (kept high)."""
    out = {}
    for layer, errs in errors.items():
        fits = [f for f, e in errs.items() if e <= max_error]
        out[layer] = min(fits, key=lambda f: sizes[layer][f]) if fits else None
    return out


def choose_by_size(errors: dict, sizes: dict, budget: int, fixed_bytes: int) -> dict:
    """layer -> format, the whole file (`fixed_bytes`: everything not planned) within `budget` bytes;
    None where even every layer in its smallest format does not fit."""
    ladder = {}
    for layer, errs in errors.items():  # each layer's formats by size, keeping only those that lower the error
        steps = []
        for f in sorted(list(errs) + [None], key=lambda f: (sizes[layer][f], f or "")):
            e = errs.get(f, 0.0)
            if not steps or e < steps[-1][1]:
                steps.append((f, e))
        ladder[layer] = steps
    choice = {layer: 0 for layer in ladder}
    total = fixed_bytes + sum(sizes[l][s[0][0]] for l, s in ladder.items())
    if total > budget:
        return None
    heap = []

    def push(layer):
        i = choice[layer]
        if i + 1 < len(ladder[layer]):
            (f0, e0), (f1, e1) = ladder[layer][i], ladder[layer][i + 1]
            cost = sizes[layer][f1] - sizes[layer][f0]
            heapq.heappush(heap, (-(e0 - e1) / max(cost, 1), layer, i))
    for layer in ladder:
        push(layer)
    while heap:
        _, layer, i = heapq.heappop(heap)
        if choice[layer] != i:
            continue
        f0, f1 = ladder[layer][i][0], ladder[layer][i + 1][0]
        cost = sizes[layer][f1] - sizes[layer][f0]
        if total + cost > budget:
            continue  # a cheaper upgrade of another layer may still fit
        total += cost
        choice[layer] = i + 1
        push(layer)
    return {layer: ladder[layer][i][0] for layer, i in choice.items()}


def capture_inputs(dit, run, rows: int = ROWS, seed: int = 0) -> dict:
    """{module name: float32 [<= rows, in_features]}: the inputs every linear layer of `dit` sees while
    `run()` calls the model (a few denoiser calls on a calibration prompt), rows picked at random."""
    import torch
    g = torch.Generator().manual_seed(seed)
    seen, hooks = {}, []

    def hook(name):
        def pre(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
            pick = x[torch.randperm(x.shape[0], generator=g)[:rows]]
            seen[name] = torch.cat([seen[name], pick])[-4 * rows:] if name in seen else pick
        return pre
    for name, m in dit.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def report(layers: dict, errors: dict, size_before: int, size_after: int, measure: str | None = None) -> dict:
    """The quality report: per layer [format, error]; format counts; sizes; mean and worst error over
    the quantized layers."""
    per = {l: [f, round(errors[l], 6)] for l, f in layers.items()}
    errs = [e for _, e in per.values()]
    counts = {}
    for f, _ in per.values():
        counts[f] = counts.get(f, 0) + 1
    worst = max(per, key=lambda l: per[l][1]) if per else None
    return {"formats": counts, "size_before": size_before, "size_after": size_after,
            "mean_error": round(sum(errs) / len(errs), 6) if errs else 0.0,
            "worst_error": per[worst][1] if worst else 0.0, "worst_layer": worst,
            "measure": measure or f"relative output error on {ROWS} rows of N(0,1) activations", "layers": per}


def reserve(layers) -> int:
    """Characters to reserve in the header for the report of these layers."""
    return 600 + sum(len(json.dumps(l)) + 40 for l in layers)


def format_report(rep: dict) -> str:
    counts = ", ".join(f"{f} {n}" for f, n in sorted(rep["formats"].items(), key=lambda x: -x[1]))
    return (f"{counts}; {rep['size_before'] / 2**30:.3f} -> {rep['size_after'] / 2**30:.3f} GiB; output error "
            f"mean {rep['mean_error']:.4f}, worst {rep['worst_error']:.4f} ({rep['worst_layer']})")
