"""`inspect`: what a checkpoint is, from its header (a file or a whole folder)."""
from __future__ import annotations

import json
import os
import sys

from ..core.errors import ModelsmithError
from ..core.report import format_report


def cmd_inspect(args) -> int:
    from ..core.inspect import inspect_dir, inspect_file
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
        print(format_report(rep))
    return 0


def register(sub, formatter) -> None:
    s = sub.add_parser("inspect", help="what a checkpoint is, from its header (a file or a whole folder)",
                       formatter_class=formatter)
    s.add_argument("file", help="a .safetensors/.ckpt/.pt/.pth file, or a models folder")
    s.add_argument("--json", action="store_true", help="print the inspection contract as JSON")
    s.set_defaults(func=cmd_inspect)
