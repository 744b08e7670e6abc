"""`workflows`, `queue`: the bundled workflows against a running ComfyUI."""
from __future__ import annotations

import json

from . import common  # noqa: F401


def cmd_workflows(args) -> int:
    from ..tools import queue as http, workflows as wf
    if args.action == "list":
        for name in wf.bundled():
            print(name)
        return 0
    info = http.http_json(f"{args.server}/object_info")
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
    from ..tools import queue as http, workflows as wf
    api = wf.load_api(args.workflow)
    if args.set:
        api = wf.apply_sets(api, args.set, http.http_json(f"{args.server}/object_info"))
    res = http.queue(api, server=args.server, out_dir=args.output, timeout=args.timeout, progress=common.progress("sampling"))
    for p in res["saved"]:
        print(f"saved {p}")
    if not res["saved"]:
        print(json.dumps(res["outputs"])[:2000])
    return 0


def register(sub) -> None:
    from ..core.names import DEFAULT_SERVER
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
