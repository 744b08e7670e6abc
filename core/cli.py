"""`python -m modelsmith`: the command line. Subcommands import what they need when they run, so
`inspect` stays free of torch and ComfyUI."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import ModelsmithError


def _format_report(r: dict) -> str:
    rows = [("file", r.get("file", {}).get("path", "")), ("family", r["family"]), ("variant", r["variant"] or "-"),
            ("layout", r["layout"] or "-"), ("precision", r["precision"] or "-"),
            ("prediction", r["prediction"] or "-"), ("ztsnr", "yes" if r["ztsnr"] else "no"),
            ("ema", "yes" if r["ema"] else "no"), ("params", f"{r['params'] / 1e6:,.1f} M"),
            ("denoiser", "yes" if r["components"].get("denoiser") else "no"),
            ("vae", "yes" if r["components"].get("vae") else "no"),
            ("text encoders", ", ".join(r["components"].get("text_encoders") or []) or "-")]
    rec = r.get("recommended") or {}
    rows.append(("recommended", ", ".join(f"{k} {v}" for k, v in rec.items())))
    d = r.get("details") or {}
    if r["family"] == "anima" and d.get("blocks"):
        rows.append(("anima", f"{d['blocks']} blocks, {d.get('width')} wide; LLM adapter {d.get('adapter_blocks')} blocks "
                              f"reading {d.get('text_encoder')}; stock native Anima would build {d.get('stock_native_blocks')}"
                              + (" (truncated)" if d.get("stock_native_truncates") else "")))
    if r.get("lora"):
        from .lora import describe
        rows.append(("lora", describe(r["lora"])))
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for w in r.get("warnings", []):
        out.append(f"{'warning'.ljust(width)}  {w}")
    return "\n".join(out)


def cmd_inspect(args) -> int:
    from .inspect import inspect_dir, inspect_file
    status = 0
    if os.path.isdir(args.file):
        results = []
        for path, rep in inspect_dir(args.file):
            if isinstance(rep, str):
                print(rep, file=sys.stderr)
                status = 2
                continue
            results.append(rep)
            if not args.json:
                fields = (rep["family"], rep["variant"], rep["layout"] or rep.get("kind"), rep["precision"],
                          rep["prediction"], "ztsnr" if rep["ztsnr"] else None)
                print(f"{path}: " + " ".join(str(f) for f in fields if f))
        if args.json:
            json.dump(results, sys.stdout, indent=2)
            print()
        return status
    try:
        rep = inspect_file(args.file)
    except ModelsmithError as e:
        print(f"modelsmith: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(rep, sys.stdout, indent=2)
        print()
    else:
        print(_format_report(rep))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (for a fast start) only the `inspect` subcommand when that is what runs."""
    # a fixed help width: argparse would otherwise import shutil (for the terminal size) at start-up
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 100

    def formatter(prog):
        return argparse.HelpFormatter(prog, width=width)
    p = argparse.ArgumentParser(prog="python -m modelsmith", formatter_class=formatter,
                                description="Modelsmith: know, load, prompt and convert image-generation checkpoints.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("inspect", help="what a checkpoint is, from its header (a file or a whole folder)",
                       formatter_class=formatter)
    s.add_argument("file", help="a .safetensors/.ckpt/.pt/.pth file, or a models folder")
    s.add_argument("--json", action="store_true", help="print the inspection contract as JSON")
    s.set_defaults(func=cmd_inspect)
    if command != "inspect":
        from . import cli_more
        cli_more.register(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] == "inspect" else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ModelsmithError as e:
        print(f"modelsmith: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modelsmith: interrupted", file=sys.stderr)
        return 130
