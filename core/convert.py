"""Convert and prune checkpoints for distribution, streaming tensor by tensor.

- bitsandbytes NF4 layers are dequantized (kernels.nf4) to the requested dtype.
- `.ckpt/.pt/.pth` inputs are read through the pickle guard; safetensors are streamed.
- dtype: floating tensors cast to fp16 / bf16 / fp32 (markers and integers untouched).
- EMA: keep, drop (remove `model_ema.*`), or only (copy EMA values into `model.diffusion_model.*`,
  as "emaonly" files do, then drop `model_ema.*`). Optimizer and training state never reach the output
  (only the state dict's tensors are read).
- VAE: keep, strip (`first_stage_model.*` removed), or bake in a VAE file under `first_stage_model.`.
- ModelSpec metadata with architecture, title, resolution, prediction type and `hash_sha256`.
"""
from __future__ import annotations

import os

from .errors import ModelsmithError, a
from .families import POSITION_IDS_KEYS

DTYPES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
FLOAT = {"F16", "BF16", "F32", "F64"}
DENOISER = "model.diffusion_model."
VAE = "first_stage_model."


def ema_key(key: str) -> str:
    """The SD1 EMA name of a denoiser key: 'model_ema.' + the name after 'model.' without dots."""
    return "model_ema." + key[len("model."):].replace(".", "")


class _PickleSource:
    """A pickle's tensors, converted to safetensors in the limited child (core/pickle_child.py) and
    streamed from there: nothing is unpickled in this process."""

    def __init__(self, path):
        from .pickle_child import converted
        from .stream import Reader
        self.tmp = converted(path)
        st = self.tmp.__enter__()
        self.st_path = st  # the child's safetensors copy (what inspection reads instead of the pickle)
        try:
            self.r = Reader(st)
        except BaseException:
            self.tmp.__exit__(None, None, None)
            raise
        self.table = {k: (t.dtype, t.shape) for k, t in self.r.header.tensors.items()}

    def keys(self):
        return self.table.keys()

    def get(self, k):
        return self.r.get(k)

    def close(self):
        if self.r is not None:
            self.r.close()
            self.r = None
            self.tmp.__exit__(None, None, None)


class _SafetensorsSource:
    def __init__(self, path):
        from .stream import Reader
        self.r = Reader(path)
        self.table = {k: (t.dtype, t.shape) for k, t in self.r.header.tensors.items()}

    def keys(self):
        return self.table.keys()

    def get(self, k):
        return self.r.get(k)

    def close(self):
        self.r.close()


def open_source(path):
    from .safetensors_io import file_format
    path = os.fspath(path)
    if file_format(path) == "pickle":
        return _PickleSource(path)
    return _SafetensorsSource(path)


def plan(table: dict, *, dtype=None, ema="keep", vae="keep", vae_table=None) -> dict:
    """output name -> (source, source key, out dtype, shape); source is 'model' or 'vae'."""
    if ema not in ("keep", "drop", "only"):
        raise ModelsmithError("ema must be keep, drop or only")
    out = {}
    has_ema = any(k.startswith("model_ema.") for k in table)
    if ema == "only" and not has_ema:
        raise ModelsmithError("--ema only: this checkpoint has no EMA weights (model_ema.*)")
    for k, (dt, shape) in table.items():
        if k.startswith("model_ema.") and ema != "keep":
            continue
        if k.startswith(VAE) and vae != "keep":
            continue
        src_key = k
        if ema == "only" and k.startswith(DENOISER) and ema_key(k) in table:
            src_key = ema_key(k)
            if tuple(table[src_key][1]) != tuple(shape):
                raise ModelsmithError(f"EMA tensor {src_key} has shape {table[src_key][1]}, model has {shape}")
        out_dt = DTYPES[dtype] if dtype and dt in FLOAT else dt
        if k in POSITION_IDS:  # always written exact, in int64 (damaged by old A1111 merges)
            out[k] = ("position_ids", src_key, "I64", shape)
            continue
        out[k] = ("model", src_key, out_dt, shape)
    if vae_table is not None:
        for k, (dt, shape) in vae_table.items():
            name = k if k.startswith(VAE) else VAE + k
            out[name] = ("vae", k, DTYPES[dtype] if dtype and dt in FLOAT else dt, shape)
    return out


NF4_OUT = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _dequantized_table(src):
    """The source's tensor table with bitsandbytes NF4 layers shown as the float weights they decode
    to (their bookkeeping tensors dropped); and the quant state of each such weight key."""
    from ..kernels import nf4 as k_nf4
    from ..kernels.formats import NF4_STATE, nf4_aux_keys, nf4_weights
    weights = nf4_weights(src.table)
    if not weights:
        return src.table, {}
    aux = nf4_aux_keys(weights)
    table = {k: v for k, v in src.table.items() if k not in aux}
    states = {}
    for wk in weights:
        try:
            states[wk] = state = k_nf4.read_state(src.get(wk + NF4_STATE))
        except ValueError as e:
            raise ModelsmithError(f"{wk}: {e}") from e
        table[wk] = (NF4_OUT.get(state.get("dtype"), "BF16"), tuple(int(x) for x in state["shape"]))
    return table, states


def _check_vae_fits(vae_path, vae_table, report) -> None:
    """A VAE baked into a checkpoint must be the kind its family decodes with (latent channels and
    image/video convs); another family's VAE is refused with one sentence before anything is written."""
    from . import families as fam
    from . import registry
    rec = registry.get(report.get("family"))
    want, got = rec.vae_signature if rec else None, fam.vae_signature(vae_table)
    if want and got and want != got:
        raise ModelsmithError(f"{os.path.basename(vae_path)} is {a(fam.describe_vae(got))}, but "
                              f"{a(report['family'])} checkpoint decodes with {a(fam.describe_vae(want))}: it would "
                              f"give broken images; pick a VAE of its family (or keep the baked-in one)")


POSITION_IDS = frozenset(POSITION_IDS_KEYS)


def exact_position_ids(shape, dtype=None):
    """0..n-1 in the stored shape (usually [1, 77]), int64 unless a dtype is given."""
    import torch
    n = shape[-1] if shape else 0
    return torch.arange(n, dtype=torch.int64).reshape(shape).to(dtype or torch.int64)


def fix_position_ids(src: str, out: str, *, progress=None) -> str:
    """A copy with exact int64 position ids and every other tensor and the metadata as they were
    (byte-identical), streamed tensor by tensor and written atomically beside the original."""
    from .stream import AtomicWriter, Reader
    with Reader(src) as r:
        entries = {k: ((r.info(k)[0], r.info(k)[1]) if k not in POSITION_IDS else ("I64", r.info(k)[1])) for k in r.keys()}
        keys = list(entries)
        with AtomicWriter(out, entries, dict(r.metadata or {})) as w:
            for i, k in enumerate(keys):
                w.add(k, exact_position_ids(entries[k][1]) if k in POSITION_IDS else r.get(k))
                if progress:
                    progress(i + 1, len(keys))
    return out


def run_convert(src_path, output, *, dtype="fp16", ema="keep", vae="keep", overwrite=False, progress=None,
                title=None, extra_metadata=None) -> dict:
    """Convert `src_path` into a safetensors file at `output`. vae: 'keep', 'strip' or a VAE file path."""
    from .inspect import inspect_file, inspect_tensors
    from .modelspec import modelspec_for
    from ..kernels import nf4 as k_nf4
    from .stream import AtomicWriter, release_freed, torch_dtype

    if dtype is not None and dtype not in DTYPES:
        raise ModelsmithError(f"dtype must be one of {', '.join(DTYPES)}")
    src = open_source(src_path)  # a pickle is converted once, in the child; inspected from that copy
    vae_src = None
    try:
        report = inspect_file(getattr(src, "st_path", src_path))
        vae_mode = vae
        if vae not in ("keep", "strip"):
            vae_rep = inspect_file(vae)
            if vae_rep.get("kind") != "vae" and not vae_rep["components"].get("vae"):
                raise ModelsmithError(f"{vae}: not a VAE file")
            vae_src = open_source(vae)
            _check_vae_fits(vae, vae_src.table, report)
            vae_mode = "strip"  # replaced by the baked-in one
        vae_table = None
        if vae_src is not None:
            vae_table = {k[len(VAE):] if k.startswith(VAE) else k: v for k, v in vae_src.table.items()
                         if k.startswith(VAE) or not k.startswith(("model.", "cond_stage_model.", "conditioner."))}
            vae_keys = {k[len(VAE):] if k.startswith(VAE) else k: k for k in vae_src.table}
        table, nf4 = _dequantized_table(src)
        p = plan(table, dtype=dtype, ema=ema, vae=vae_mode, vae_table=vae_table)
        out_report = inspect_tensors({k: (v[2], v[3]) for k, v in p.items()}, {})
        meta = modelspec_for({**report, "layout": out_report["layout"]},
                             title=title or os.path.splitext(os.path.basename(output))[0])
        meta.update(extra_metadata or {})
        with AtomicWriter(output, {k: (v[2], v[3]) for k, v in p.items()}, meta, overwrite=overwrite,
                          hash_key="modelspec.hash_sha256") as w:
            for i, (k, (where, sk, dt, shape)) in enumerate(p.items()):
                if where == "position_ids":
                    t = exact_position_ids(shape)
                elif where == "vae":
                    t = vae_src.get(vae_keys[sk])
                elif sk in nf4:
                    t = k_nf4.dequantize_layer(src.get, sk, state=nf4[sk])
                else:
                    t = src.get(sk)
                w.add(k, t.to(torch_dtype(dt)))
                del t
                release_freed()  # the memory of the tensor just handed over, back to the system
                if progress:
                    progress(i + 1, len(p))
    finally:
        src.close()
        if vae_src is not None:
            vae_src.close()
    dropped_ema = sum(1 for k in src.table if k.startswith("model_ema.")) if ema != "keep" else 0
    return {"output": output, "tensors": len(p), "dropped_ema": dropped_ema, "family": report["family"],
            "warnings": report["warnings"]}
