"""`prompt`: normalize and reorder a tag prompt for a convention."""
from __future__ import annotations

import sys


def cmd_prompt(args) -> int:
    from ..core import prompt as P
    if args.negative:
        print(P.negative(args.convention))
        return 0
    text = " ".join(args.text) if args.text else sys.stdin.read()
    print(P.normalize(text, args.convention))
    for note in P.conversion_notes(text, args.convention):
        print(f"note: {note}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from ..core.names import CONVENTIONS
    s = sub.add_parser("prompt", help="normalize and reorder a tag prompt for a model family's convention")
    s.add_argument("text", nargs="*", help="the prompt (read from stdin when omitted)")
    s.add_argument("--convention", choices=CONVENTIONS, default="anima")
    s.add_argument("--negative", action="store_true", help="print the convention's preset negative prompt")
    s.set_defaults(func=cmd_prompt)
