"""Merge methods as small functions over tensors, a recipe as data, and a streaming merge.

Methods compute in float32, chunk by chunk for elementwise ones; a `native` method is exact to one
rounding in the inputs' own dtype (torch.lerp computes in float32 internally) and runs on them directly:
  weighted_sum    A*(1-a) + B*a                     (native: torch.lerp)
  add_difference  A + (B - C)*a
  ties            C + a * TIES(A - C, B - C)        (keep the top `density` magnitudes, ties at the
                                                    threshold kept; elect sign; disjoint mean)
  dare            A + a * DARE(B - C)               (drop with probability `drop`, rescale, seeded per key)
  slerp           spherical interpolation of A and B by a (linear when nearly parallel)
Block weights replace `a` per block (core/blocks.py).

Rules: inputs of different families are refused before any work. A key missing from B (or C)
is copied from A; keys only in B/C are left out; shape mismatches keep A's tensor; non-float
tensors (markers, ints) come from A. Every such case is counted in the report. The output takes
A's dtype unless one is given. A `ztsnr` marker is written only when every input has it or the
recipe asks for it.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field

from . import blocks as blk
from .errors import ModelsmithError
from .files import write_new_text

METHODS = {}
NEEDS_C = {"add_difference", "ties", "dare"}
ELEMENTWISE = set()  # methods whose result at each element depends only on that element
NATIVE = set()       # methods that round once in the inputs' dtype, so need no float32 copies
CHUNK = 1 << 20      # elements per float32 working chunk (stays in cache, keeps RAM flat)


def method(name, elementwise=False, native=False):
    def reg(fn):
        METHODS[name] = fn
        if elementwise:
            ELEMENTWISE.add(name)
        if native:
            NATIVE.add(name)
        return fn
    return reg


@method("weighted_sum", elementwise=True, native=True)
def weighted_sum(a, b, c, alpha, **kw):
    import torch
    return torch.lerp(a, b, alpha)


@method("add_difference", elementwise=True)
def add_difference(a, b, c, alpha, **kw):
    return a + (b - c) * alpha


@method("ties")
def ties(a, b, c, alpha, density=0.2, **kw):
    import torch
    deltas = torch.stack([a - c, b - c])
    if density < 1.0:
        k = max(1, int(round(density * deltas[0].numel())))
        flat = deltas.reshape(2, -1).abs()
        thresh = flat.kthvalue(flat.shape[1] - k + 1, dim=1).values.view(2, *([1] * (deltas.ndim - 1)))
        deltas = torch.where(deltas.abs() >= thresh, deltas, torch.zeros_like(deltas))
    sign = torch.sign(deltas.sum(0))
    agree = (torch.sign(deltas) == sign) & (deltas != 0)
    total = (deltas * agree).sum(0)
    count = agree.sum(0).clamp(min=1)
    return c + alpha * total / count


def _key_generator(seed: int, key: str):
    import torch
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFF_FFFF_FFFF_FFFF)


@method("dare")
def dare(a, b, c, alpha, drop=0.9, seed=0, key="", **kw):
    import torch
    delta = b - c
    keep = torch.rand(delta.shape, generator=_key_generator(seed, key)) >= drop
    return a + alpha * delta * keep / (1.0 - drop)


@method("slerp")
def slerp(a, b, c, alpha, eps=1e-8, **kw):
    """The angle and norms in float64 (a float32 dot product over millions of elements loses ~1e-4
    relative in the coefficients); the two coefficients then scale the tensors in their own dtype."""
    import math

    import torch
    fa, fb = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = float(fa.norm()), float(fb.norm())
    if na < eps or nb < eps:
        return a * (1 - alpha) + b * alpha
    dot = max(-1.0, min(1.0, float(fa @ fb) / (na * nb)))
    del fa, fb
    omega = math.acos(dot)
    if abs(omega) < 1e-4:
        return a * (1 - alpha) + b * alpha
    so = math.sin(omega)
    return (math.sin((1 - alpha) * omega) / so) * a + (math.sin(alpha * omega) / so) * b


@dataclass
class Recipe:
    method: str
    inputs: list
    output: str = ""
    alpha: float = 0.5
    blocks: dict = field(default_factory=dict)
    density: float = 0.2
    drop: float = 0.9
    seed: int = 0
    dtype: str | None = None
    keep_ztsnr: bool = False

    def to_json(self) -> str:
        return json.dumps({"modelsmith_recipe": 1, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "recipe") -> "Recipe":
        """A recipe from its JSON; anything else is a clear error naming what is wrong."""
        from .safetensors_io import MAX_JSON_DEPTH, json_depth
        if isinstance(text, str) and json_depth(text) > MAX_JSON_DEPTH:
            raise ModelsmithError(f"{source}: not a Modelsmith recipe (JSON nested deeper than {MAX_JSON_DEPTH} levels)")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ModelsmithError(f"{source}: not a Modelsmith recipe (broken JSON: {str(e)[:120]})") from None
        if not isinstance(d, dict):
            raise ModelsmithError(f"{source}: not a Modelsmith recipe (expected a JSON object)")
        d.pop("modelsmith_recipe", None)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelsmithError(f"{source}: unknown recipe fields {', '.join(map(str, unknown))[:200]}")
        try:
            r = cls(**d)
        except TypeError as e:
            raise ModelsmithError(f"{source}: incomplete recipe ({e})") from None
        if not isinstance(r.inputs, list) or not all(isinstance(p, str) for p in r.inputs) \
                or not isinstance(r.method, str) or not isinstance(r.blocks, dict) \
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in
                           [r.alpha, r.density, r.drop, r.seed, *r.blocks.values()]):
            raise ModelsmithError(f"{source}: a recipe field has the wrong type (inputs: list of paths, method: text, "
                                  f"alpha/density/drop/seed and block weights: numbers)")
        return r

    def validate(self):
        import math
        numbers = {"alpha": self.alpha, "density": self.density, "drop": self.drop,
                   **{f"block {k}": v for k, v in self.blocks.items()}}
        bad = [k for k, v in numbers.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ModelsmithError(f"merge: {', '.join(bad)} must be a finite number (NaN or infinity would "
                                  f"poison every merged weight)")
        if not 0.0 <= self.drop < 1.0:
            raise ModelsmithError(f"merge: DARE drop must be at least 0 and below 1 (got {self.drop}: at 1 every "
                                  f"difference is dropped and the rescale divides by zero)")
        if not 0.0 < self.density <= 1.0:
            raise ModelsmithError(f"merge: TIES density must be above 0 and at most 1 (got {self.density})")
        if self.method not in METHODS:
            raise ModelsmithError(f"unknown merge method {self.method!r}; choose one of {', '.join(METHODS)}")
        need = 3 if self.method in NEEDS_C else 2
        if len(self.inputs) != need:
            raise ModelsmithError(f"{self.method} needs {need} input models (A B{' C' if need == 3 else ''}), "
                                  f"got {len(self.inputs)}")


def merge_tensor(recipe: Recipe, key: str, a, b, c, family: str, out_dtype=None):
    """The merged tensor for `key` in `out_dtype` (default float32), honouring block weights.

    The method computes in float32; elementwise methods run chunk by chunk into the output."""
    import torch
    alpha = recipe.blocks.get(blk.block_of(key, family), recipe.alpha) if recipe.blocks else recipe.alpha
    fn = METHODS[recipe.method]
    kw = dict(density=recipe.density, drop=recipe.drop, seed=recipe.seed, key=key)
    out_dtype = out_dtype or torch.float32
    if recipe.method in NATIVE and a.dtype == b.dtype and (c is None or c.dtype == a.dtype):
        return fn(a, b, c, alpha, **kw).to(out_dtype)
    if recipe.method not in ELEMENTWISE or a.numel() <= CHUNK:
        c32 = c.float() if c is not None else None
        return fn(a.float(), b.float(), c32, alpha, **kw).to(out_dtype)
    out = torch.empty(a.shape, dtype=out_dtype)
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.view(-1)
    fc = c.reshape(-1) if c is not None else None
    for s in range(0, fa.numel(), CHUNK):
        e = s + CHUNK
        fo[s:e] = fn(fa[s:e].float(), fb[s:e].float(), fc[s:e].float() if fc is not None else None, alpha, **kw)
    return out


def run_merge(recipe: Recipe, output: str, *, overwrite=False, progress=None, metadata_extra=None) -> dict:
    """Stream the merge of recipe.inputs into `output`. Returns a report (counts, warnings, path)."""
    from .inspect import inspect_file
    from .modelspec import modelspec_for
    from .convert import exact_position_ids
    from .families import POSITION_IDS_KEYS
    from .stream import AtomicWriter, Reader, check_output_path, prefetched, release_freed, torch_dtype

    recipe.validate()
    # the recipe is written beside the result: both names must be free (or overwrite asked) before any work
    check_output_path(output, overwrite=overwrite)
    check_output_path(output + ".recipe.json", overwrite=overwrite)
    reports = [inspect_file(p) for p in recipe.inputs]
    fams = {r["family"] for r in reports}
    if len(fams) != 1:
        raise ModelsmithError("cannot merge models of different families: " +
                              ", ".join(f"{os.path.basename(p)} is {r['family']}" for p, r in zip(recipe.inputs, reports)))
    family = fams.pop()
    warnings = []
    preds = [(r["prediction"], r["ztsnr"]) for r in reports]
    if any(z for _, z in preds) and not all(z for _, z in preds):
        warnings.append("Merging a ZTSNR v-prediction model with a model without ZTSNR weakens or removes the ZTSNR "
                        "effect; the output carries no ztsnr marker unless you ask for it.")
    if len({p for p, _ in preds}) > 1:
        warnings.append(f"The inputs disagree on prediction ({', '.join(str(p) for p, _ in preds)}); the output "
                        f"keeps A's markers.")
    readers = [Reader(p) for p in recipe.inputs]
    if recipe.blocks:
        try:
            names = set(blk.block_names(family, readers[0].keys()))
        except ModelsmithError:
            for r in readers:
                r.close()
            raise
        recipe.blocks = {blk.canonical(k, family): v for k, v in recipe.blocks.items()}
        unknown = set(recipe.blocks) - names
        if unknown:
            for r in readers:
                r.close()
            raise ModelsmithError(f"unknown block names for this {family} model: {', '.join(sorted(unknown))}")
    try:
        ra, rb = readers[0], readers[1]
        rc = readers[2] if len(readers) > 2 else None
        out_dtype = recipe.dtype
        counts = {"merged": 0, "copied_from_a": 0, "missing_in_b": 0, "shape_mismatch": 0, "only_in_b": 0}
        entries = {}
        all_ztsnr = all(z for _, z in preds)
        for k in ra.keys():
            if k == "ztsnr" and not (all_ztsnr or recipe.keep_ztsnr):
                continue
            info = ra.info(k)
            dt = info.dtype
            if out_dtype and dt in ("F32", "F16", "BF16"):
                dt = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}[out_dtype]
            entries[k] = ("I64" if k in POSITION_IDS_KEYS else dt, info.shape)
        counts["only_in_b"] = sum(1 for k in rb.keys() if k not in ra)
        meta = modelspec_for(reports[0], title=os.path.splitext(os.path.basename(output))[0],
                             merged_from=[os.path.basename(p) for p in recipe.inputs])
        meta["modelsmith.recipe"] = recipe.to_json()
        meta.update(metadata_extra or {})
        total = len(entries)
        with AtomicWriter(output, entries, meta, overwrite=overwrite, hash_key="modelspec.hash_sha256") as w:
            def load(k):
                a = ra.get(k)
                if not (a.is_floating_point() and a.numel() > 0):
                    return a, None, None, "copied_from_a"
                if k not in rb or (rc is not None and k not in rc):
                    return a, None, None, "missing_in_b"
                b = rb.get(k)
                c = rc.get(k) if rc is not None else None
                if b.shape != a.shape or (c is not None and c.shape != a.shape):
                    return a, None, None, "shape_mismatch"
                return a, b, c, "merged"

            for i, (k, (a, b, c, what)) in enumerate(prefetched(entries, load)):
                dt = entries[k][0]
                counts[what] += 1
                if k in POSITION_IDS_KEYS:  # ids, not weights: exact int64 whatever the inputs hold
                    out = exact_position_ids(tuple(a.shape))
                else:
                    out = merge_tensor(recipe, k, a, b, c, family, torch_dtype(dt)) if what == "merged" else a
                del a, b, c
                w.add(k, out.to(torch_dtype(dt)))
                del out
                release_freed()
                if progress:
                    progress(i + 1, total)
    finally:
        for r in readers:
            r.close()
    if counts["missing_in_b"]:
        warnings.append(f"{counts['missing_in_b']} tensors missing from B/C were copied from A.")
    if counts["shape_mismatch"]:
        warnings.append(f"{counts['shape_mismatch']} tensors with different shapes were kept from A.")
    if counts["only_in_b"]:
        warnings.append(f"{counts['only_in_b']} tensors that exist only in B were left out.")
    recipe.output = output
    write_new_text(output + ".recipe.json", recipe.to_json(), overwrite=overwrite)
    return {"output": output, "family": family, "counts": counts, "warnings": warnings}
