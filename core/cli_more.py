"""Subcommands beyond inspect; each registers itself on the CLI's subparsers."""
from __future__ import annotations

import json
import os
import sys


def cmd_prompt(args) -> int:
    from . import prompt as P
    if args.negative:
        print(P.negative(args.convention))
        return 0
    text = " ".join(args.text) if args.text else sys.stdin.read()
    print(P.normalize(text, args.convention))
    for note in P.conversion_notes(text, args.convention):
        print(f"note: {note}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from .names import CONVENTIONS
    s = sub.add_parser("prompt", help="normalize and reorder a tag prompt for a model family's convention")
    s.add_argument("text", nargs="*", help="the prompt (read from stdin when omitted)")
    s.add_argument("--convention", choices=CONVENTIONS, default="anima")
    s.add_argument("--negative", action="store_true", help="print the convention's preset negative prompt")
    s.set_defaults(func=cmd_prompt)
    register_tools(sub)
    register_workflows(sub)
    register_quantize(sub)
    register_doctor(sub)


def _progress(desc):
    """A progress callback (done, total) drawing a bar on stderr."""
    state = {"last": -1}

    def cb(done, total):
        pct = int(100 * done / max(1, total))
        if pct != state["last"]:
            state["last"] = pct
            bar = "#" * (pct // 4)
            print(f"\r{desc} [{bar:<25}] {pct:3d}% ({done}/{total} tensors)", end="", file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)
    return cb


def _output_path(path, keep_name):
    import os
    from .files import safe_filename
    folder, name = os.path.split(path)
    if not keep_name:
        safe = safe_filename(name)
        if not safe.lower().endswith(".safetensors"):
            safe = os.path.splitext(safe)[0] + ".safetensors"
        if safe != name:
            print(f"note: writing {safe} (ASCII, no spaces); use --keep-name to keep {name!r}", file=sys.stderr)
        name = safe
    return os.path.join(folder, name)


def cmd_convert(args) -> int:
    from .convert import run_convert
    out = _output_path(args.output, args.keep_name)
    rep = run_convert(args.input, out, dtype=args.dtype, ema=args.ema, vae=args.vae or "keep",
                      overwrite=args.overwrite, progress=_progress("convert"))
    print(f"wrote {rep['output']} ({rep['tensors']} tensors" +
          (f", {rep['dropped_ema']} EMA tensors dropped" if rep["dropped_ema"] else "") + ")")
    return 0


def _read_small_text(path: str, what: str, limit: int = 1 << 20) -> str:
    from .errors import ModelsmithError
    from .files import check_regular_file
    st = check_regular_file(path)
    if st.st_size > limit:
        raise ModelsmithError(f"{path}: {st.st_size} bytes is too large for a {what} (at most {limit})")
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelsmithError(f"{path}: not a {what} (not UTF-8 text)") from None
    except OSError as e:
        raise ModelsmithError(f"{path}: cannot read it ({e.strerror})") from None


def cmd_merge(args) -> int:
    from .blocks import parse_block_weights
    from .inspect import inspect_file
    from .merge import Recipe, run_merge
    if args.recipe:
        recipe = Recipe.from_json(_read_small_text(args.recipe, "recipe"), source=args.recipe)
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
        blocks = {}
        if args.blocks:
            rep = inspect_file(inputs[0])
            blocks = parse_block_weights(args.blocks, rep["family"], rep.get("details", {}).get("blocks", 28))
        recipe = Recipe(method=args.method, inputs=inputs, alpha=args.alpha, blocks=blocks, density=args.density,
                        drop=args.drop, seed=args.seed, dtype=args.dtype, keep_ztsnr=args.keep_ztsnr)
    out = _output_path(output, args.keep_name)
    rep = run_merge(recipe, out, overwrite=args.overwrite, progress=_progress("merge"))
    for w in rep["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {rep['output']} ({rep['counts']['merged']} tensors merged); recipe: {rep['output']}.recipe.json")
    return 0


def register_tools(sub) -> None:
    from .names import MERGE_METHODS
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
    m.add_argument("--blocks", help='block weights: "BASE:0.5,IN00:0.2,..." or one number per block')
    m.add_argument("--density", type=float, default=0.2, help="TIES: fraction of each task vector kept")
    m.add_argument("--drop", type=float, default=0.9, help="DARE: drop probability")
    m.add_argument("--seed", type=int, default=0, help="DARE: random seed")
    m.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="output dtype (default: A's)")
    m.add_argument("--keep-ztsnr", action="store_true", help="write the ztsnr marker even if not all inputs have it")
    m.add_argument("--recipe", help="replay a saved recipe JSON: merge --recipe RECIPE OUT")
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--keep-name", action="store_true")
    m.set_defaults(func=cmd_merge)


def cmd_workflows(args) -> int:
    from . import workflows as wf
    if args.action == "list":
        for name in wf.bundled():
            print(name)
        return 0
    info = wf.http_json(f"{args.server}/object_info")
    if args.action == "build":
        for p in wf.build_all(info):
            print(f"wrote {p}")
        return 0
    bad = 0
    for name, problems in wf.check_all(info).items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for p in problems:
            print(f"     {p}")
        bad += bool(problems)
    return 1 if bad else 0


def cmd_queue(args) -> int:
    from . import workflows as wf
    api = wf.load_api(args.workflow)
    if args.set:
        api = wf.apply_sets(api, args.set, wf.http_json(f"{args.server}/object_info"))
    res = wf.queue(api, server=args.server, out_dir=args.output, timeout=args.timeout, progress=_progress("sampling"))
    for p in res["saved"]:
        print(f"saved {p}")
    if not res["saved"]:
        print(json.dumps(res["outputs"])[:2000])
    return 0


def register_workflows(sub) -> None:
    from .names import DEFAULT_SERVER
    w = sub.add_parser("workflows", help="list, build or check the bundled workflows against a running ComfyUI")
    w.add_argument("action", choices=["list", "check", "build"])
    w.add_argument("--server", default=DEFAULT_SERVER)
    w.set_defaults(func=cmd_workflows)
    q = sub.add_parser("queue", help="queue a bundled workflow (or an API-format JSON file) over HTTP")
    q.add_argument("workflow", help="a bundled workflow name (see 'workflows list') or a path")
    q.add_argument("--server", default=DEFAULT_SERVER)
    q.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    q.add_argument("--output", default="modelsmith_images", help="folder for the images (default ./modelsmith_images)")
    q.add_argument("--timeout", type=float, default=3600)
    q.set_defaults(func=cmd_queue)


def cmd_quantize(args) -> int:
    from .quantize import run_quantize
    out = _output_path(args.output, args.keep_name)
    rep = run_quantize(args.input, out, fmt=args.format, preset=args.preset, exclude=args.exclude or "",
                       overwrite=args.overwrite, progress=_progress("quantize"))
    print(f"wrote {rep['output']}: {rep['quantized_layers']} layers in {args.format} "
          f"({rep['bytes_per_param']:.3f} bytes/param), preset {rep['preset']}")
    return 0


def register_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a denoiser to fp8 or nvfp4 in ComfyUI's native format, streaming")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--format", choices=["fp8", "nvfp4"], default="fp8")
    q.add_argument("--preset", choices=["auto", "anima", "sdxl", "none"], default="auto",
                   help="layers kept in high precision (auto: by the detected family)")
    q.add_argument("--exclude", help="more layers to keep, comma-separated regular expressions")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--keep-name", action="store_true")
    q.set_defaults(func=cmd_quantize)


def _doctor_folders(root: str) -> dict:
    from .doctor import ALIASES, KINDS
    folders = {}
    for name in KINDS + tuple(ALIASES):
        p = os.path.join(root, name)
        if os.path.isdir(p):
            folders.setdefault(ALIASES.get(name, name), []).append(p)
    if not folders:
        raise_error(f"{root}: no model folders in it (checkpoints, diffusion_models, text_encoders, vae, loras)")
    return folders


def raise_error(msg):
    from .errors import ModelsmithError
    raise ModelsmithError(msg)


def _cache_path():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modelsmith", "doctor.json")


def cmd_doctor(args) -> int:
    from . import doctor
    if not os.path.isdir(args.models):
        raise_error(f"{args.models}: not a folder (give ComfyUI's models folder)")
    cache = doctor.Cache(None if args.no_cache else _cache_path())
    entries = doctor.scan(_doctor_folders(args.models), cache)
    by_id = {e["id"]: e for e in entries}
    if args.hash:
        for e in entries:
            if e.get("status") == "ok":
                e["sha256"] = doctor.file_hash(e["path"], cache)
        doctor.relist(entries)
    if args.fix:
        action, fid = args.fix
        if fid not in by_id:
            raise_error(f"no file {fid!r} in this scan; ids look like checkpoints/name.safetensors")
        res = doctor.apply_fix(by_id[fid], action, replace=args.replace, progress=_progress(action))
        print(f"{action}: wrote {res['output']}")
        return 0
    if args.json:
        print(json.dumps([{k: v for k, v in e.items() if k != "path"} for e in entries], indent=2))
        return 0
    for e in entries:
        s = e.get("summary") or {}
        what = " ".join(str(x) for x in (s.get("family"), s.get("variant"), s.get("layout") or s.get("kind"),
                                         s.get("precision"), s.get("prediction"), "ztsnr" if s.get("ztsnr") else None)
                        if x and x != "unknown") or e.get("status")
        size = f"{e['size'] / 1e9:.2f} GB" if e["size"] >= 1e8 else f"{e['size'] / 1e6:.1f} MB"
        extra = f"  sha256 {e['sha256'][:12]} (AutoV2 {doctor.autov2(e['sha256'])})" if e.get("sha256") else ""
        print(f"{e['id']}: {what}, {size}{extra}")
        for p in e["problems"]:
            print(f"    - {p['why']}" + (f"  [fix: doctor --fix {p['fix']} {e['id']}]" if p.get("fix") else ""))
    bad = sum(1 for e in entries if e["problems"])
    print(f"{len(entries)} files, {bad} with problems")
    return 0


def register_doctor(sub) -> None:
    from .doctor import FIXES
    d = sub.add_parser("doctor", help="the whole models folder at a glance, with one-step fixes")
    d.add_argument("models", help="ComfyUI's models folder (holding checkpoints/, loras/, vae/, ...)")
    d.add_argument("--fix", nargs=2, metavar=("ACTION", "ID"), help=f"run one fix ({', '.join(FIXES)}) on a file id")
    d.add_argument("--replace", action="store_true", help="with --fix: the result takes the original's place")
    d.add_argument("--hash", action="store_true", help="compute (and cache) sha256 / AutoV2 of every file")
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-cache", action="store_true", help="inspect every file again")
    d.set_defaults(func=cmd_doctor)
