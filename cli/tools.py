"""`convert`, `merge`, `quantize`: the streaming model tools."""
from __future__ import annotations

import sys

from ..core import names, registry
from . import common


def cmd_convert(args) -> int:
    from ..core.convert import run_convert
    out = common.output_path(args.output, args.keep_name)
    rep = run_convert(args.input, out, dtype=args.dtype, ema=args.ema, vae=args.vae or "keep",
                      overwrite=args.overwrite, progress=common.progress("convert"))
    print(f"wrote {rep['output']} ({rep['tensors']} tensors" +
          (f", {rep['dropped_ema']} EMA tensors dropped" if rep["dropped_ema"] else "") + ")")
    return 0


def cmd_merge(args) -> int:
    from ..core.blocks import parse_for_file
    from ..core.merge import Recipe, run_merge
    if args.recipe:
        recipe = Recipe.from_json(common.read_small_text(args.recipe, "recipe"), source=args.recipe)
        if len(args.models) != 1:
            # a recipe records where it was written, but never chooses where to write by itself
            print("modelsmith: give the output file after the recipe: merge --recipe RECIPE OUT", file=sys.stderr)
            return 2
        output = args.models[0]
    else:
        if len(args.models) < 3:
            print("modelsmith: merge needs A B [C] OUT", file=sys.stderr)
            return 2
        *inputs, output = args.models
        blocks = parse_for_file(args.blocks, inputs[0]) if args.blocks else {}
        recipe = Recipe(method=args.method, inputs=inputs, alpha=args.alpha, blocks=blocks, density=args.density,
                        drop=args.drop, seed=args.seed, dtype=args.dtype, keep_ztsnr=args.keep_ztsnr)
    out = common.output_path(output, args.keep_name)
    rep = run_merge(recipe, out, overwrite=args.overwrite, progress=common.progress("merge"))
    for w in rep["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {rep['output']} ({rep['counts']['merged']} tensors merged); recipe: {rep['output']}.recipe.json")
    return 0


def cmd_quantize(args) -> int:
    from ..core.quantize import run_quantize
    out = common.output_path(args.output, args.keep_name)
    from ..core.errors import ModelsmithError
    from ..core.qplan import format_report
    candidates = [c.strip() for c in (args.candidates or "nvfp4,fp8").split(",") if c.strip()]
    if args.max_gb is not None and args.max_gb <= 0 or args.max_error is not None and args.max_error <= 0:
        raise ModelsmithError("--max-gb and --max-error take a positive number")
    rep = run_quantize(args.input, out, fmt=args.format, preset=args.preset, exclude=args.exclude or "",
                       overwrite=args.overwrite, progress=None if args.json else common.progress("quantize"),
                       max_error=args.max_error, max_bytes=args.max_gb * 1e9 if args.max_gb else None,
                       candidates=candidates)
    if args.json:
        import json
        print(json.dumps({k: rep[k] for k in ("output", "preset", "quantized_layers", "verified_layers", "quality")},
                         indent=1))
        return 0
    what = "mixed formats" if args.max_gb or args.max_error else args.format
    print(f"wrote {rep['output']}: {rep['quantized_layers']} layers in {what} "
          f"({rep['bytes_per_param']:.3f} bytes/param), preset {rep['preset']}; all checked after writing")
    print(f"quality: {format_report(rep['quality'])}")
    return 0


def register(sub) -> None:
    from ..core.names import MERGE_METHODS
    c = sub.add_parser("convert", help="convert/prune a checkpoint to safetensors (dtype, EMA, VAE, ModelSpec)")
    c.add_argument("input", help="a .safetensors or .ckpt/.pt/.pth checkpoint")
    c.add_argument("output", help="the .safetensors file to write")
    c.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    c.add_argument("--ema", choices=["keep", "drop", "only"], default="drop",
                   help="drop EMA weights (default), keep them, or use only them (emaonly)")
    c.add_argument("--vae", help="'strip' to remove the baked-in VAE, or a VAE file to bake in")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    c.add_argument("--keep-name", action="store_true", help="keep spaces/non-ASCII in the output name")
    c.set_defaults(func=cmd_convert)
    m = sub.add_parser("merge", help="merge checkpoints, streaming: A B [C] OUT")
    m.add_argument("models", nargs="*", help="A B [C] OUT (C for add_difference, ties, dare)")
    m.add_argument("--method", choices=MERGE_METHODS, default="weighted_sum")
    m.add_argument("--alpha", type=float, default=0.5, help="merge ratio (B's share)")
    m.add_argument("--blocks", help='block weights: "BASE:0.5,IN00:0.2,..." (SD1/SDXL), "double_blocks.0:0.3,..." (FLUX: core merge-node names), or one number per block')
    m.add_argument("--density", type=float, default=0.2, help="TIES: fraction of each task vector kept")
    m.add_argument("--drop", type=float, default=0.9, help="DARE: drop probability")
    m.add_argument("--seed", type=int, default=0, help="DARE: random seed")
    m.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="output dtype (default: A's)")
    m.add_argument("--keep-ztsnr", action="store_true", help="write the ztsnr marker even if not all inputs have it")
    m.add_argument("--recipe", help="replay a saved recipe JSON: merge --recipe RECIPE OUT")
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--keep-name", action="store_true")
    m.set_defaults(func=cmd_merge)
    register_quantize(sub)
    from ..core.publish import LICENSES
    p = sub.add_parser("publish", help="prepare a model folder for uploading: fp16, pruned, safetensors, model card")
    p.add_argument("input", help="the model (.safetensors, or a .ckpt read through the guard)")
    p.add_argument("outdir", help="the folder to write (created; nothing in it is replaced)")
    p.add_argument("--title", help="the model's name (default: the file's); the file name is its ASCII form")
    p.add_argument("--license", choices=LICENSES, default="other")
    p.add_argument("--repo", help="the Hugging Face repository for the printed upload command (user/name)")
    p.set_defaults(func=cmd_publish)
    b = sub.add_parser("merge-lora", help="bake LoRAs into a model, streaming: MODEL LORA[:STRENGTH] ... OUT")
    b.add_argument("items", nargs="+", help="MODEL, one or more LORA[:STRENGTH] (default strength 1), then OUT")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--keep-name", action="store_true")
    b.set_defaults(func=cmd_merge_lora)


def cmd_merge_lora(args) -> int:
    from ..core.bake import bake, parse_lora_arg
    if len(args.items) < 3:
        print("modelsmith: merge-lora needs MODEL LORA[:STRENGTH] [...] OUT", file=sys.stderr)
        return 2
    model, *loras, output = args.items
    out = common.output_path(output, args.keep_name)
    rep = bake(model, [parse_lora_arg(x) for x in loras], out, overwrite=args.overwrite,
               progress=common.progress("merge-lora"))
    for w in rep["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {rep['output']} ({rep['layers']} layers changed)")
    return 0


def cmd_publish(args) -> int:
    from ..core.publish import publish
    rep = publish(args.input, args.outdir, title=args.title, license=args.license, repo=args.repo,
                  progress=common.progress("publish"))
    print(f"wrote {rep['model']} (sha256 {rep['sha256']})")
    print(f"wrote {rep['card']}")
    print(f"upload (not run): {rep['upload']}")
    return 0


def register_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a denoiser to fp8, int8, mxfp8 or nvfp4 in ComfyUI's native "
                                        "format, streaming, with every layer checked after writing")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--format", choices=names.QUANTIZE_FORMATS, default="fp8",
                   help="fp8 (e4m3, loads in every ComfyUI), fp8_e5m2, int8 (int8_tensorwise: GPUs without fp8), "
                        "mxfp8, nvfp4; all but fp8 need ComfyUI >= 0.29")
    q.add_argument("--preset", choices=["auto", *registry.quantize_presets(), "none"], default="auto",
                   help="layers kept in high precision: a family's (auto: the detected family's), or none")
    q.add_argument("--exclude", help="more layers to keep, comma-separated regular expressions")
    q.add_argument("--max-gb", type=float, help="mixed formats: the best measured quality within this file size")
    q.add_argument("--max-error", type=float, help="mixed formats: per layer the smallest format whose relative "
                                                   "output error is within this (e.g. 0.03)")
    q.add_argument("--candidates", help="the formats a mixed plan picks from (default nvfp4,fp8)")
    q.add_argument("--json", action="store_true", help="print the result and quality report as JSON")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--keep-name", action="store_true")
    q.set_defaults(func=cmd_quantize)
