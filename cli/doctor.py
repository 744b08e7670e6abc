"""`doctor`: the whole models folder at a glance, with one-step fixes."""
from __future__ import annotations

import json
import os

from . import common


def _doctor_folders(root: str) -> dict:
    from ..core.doctor import ALIASES, KINDS
    folders = {}
    for name in KINDS + tuple(ALIASES):
        p = os.path.join(root, name)
        if os.path.isdir(p):
            folders.setdefault(ALIASES.get(name, name), []).append(p)
    if not folders:
        common.raise_error(f"{root}: no model folders in it (checkpoints, diffusion_models, text_encoders, vae, loras)")
    return folders


def _cache_path():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modelsmith", "doctor.json")


def cmd_doctor(args) -> int:
    from ..core import doctor
    if not os.path.isdir(args.models):
        common.raise_error(f"{args.models}: not a folder (give ComfyUI's models folder)")
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
            common.raise_error(f"no file {fid!r} in this scan; ids look like checkpoints/name.safetensors")
        res = doctor.apply_fix(by_id[fid], action, replace=args.replace, progress=common.progress(action))
        print(f"{action}: wrote {res['output']}" + (f" ({res['note']})" if res.get("note") else ""))
        return 0
    if args.json:
        print(json.dumps([{k: v for k, v in e.items() if k not in ("path", "root")} for e in entries], indent=2))
        return 0
    for e in entries:
        s = e.get("summary") or {}
        what = " ".join(str(x) for x in (s.get("family"), s.get("variant"), s.get("layout") or s.get("kind"),
                                         s.get("precision"),
                                         "(" + ", ".join(f"{k} {n}" for k, n in {**s["quantization"], **(s.get("unquantized_layers") or {})}.items()) + ")"
                                         if s.get("quantization") else None,
                                         s.get("prediction"), "ztsnr" if s.get("ztsnr") else None)
                        if x and x != "unknown") or e.get("status")
        size = f"{e['size'] / 1e9:.2f} GB" if e["size"] >= 1e8 else f"{e['size'] / 1e6:.1f} MB"
        extra = f"  sha256 {e['sha256'][:12]} (AutoV2 {doctor.autov2(e['sha256'])})" if e.get("sha256") else ""
        print(f"{e['id']}: {what}, {size}{extra}")
        for te, ids in (e.get("companions") or {}).items():
            print(f"    uses {te}: {', '.join(ids)}")
        if e.get("used_by"):
            print(f"    used by: {', '.join(e['used_by'])}")
        for p in e["problems"]:
            print(f"    - {p['why']}" + (f"  [fix: doctor --fix {p['fix']} {e['id']}]" if p.get("fix") else ""))
    head = doctor.summary(entries)
    print(f"{head['files']} files, {head['total_bytes'] / 1e9:.2f} GB; {head['with_problems']} with problems; "
          f"fixes would free {head['freeable_bytes'] / 1e9:.2f} GB; {len(head['cannot_run'])} cannot run as they are")
    return 0


def register(sub) -> None:
    from ..core.doctor import FIXES
    d = sub.add_parser("doctor", help="the whole models folder at a glance, with one-step fixes")
    d.add_argument("models", help="ComfyUI's models folder (holding checkpoints/, loras/, vae/, ...)")
    d.add_argument("--fix", nargs=2, metavar=("ACTION", "ID"), help=f"run one fix ({', '.join(FIXES)}) on a file id")
    d.add_argument("--replace", action="store_true", help="with --fix: the result takes the original's place")
    d.add_argument("--hash", action="store_true", help="compute (and cache) sha256 / AutoV2 of every file")
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-cache", action="store_true", help="inspect every file again")
    d.set_defaults(func=cmd_doctor)
