"""The command line: `python -m modelsmith COMMAND`. One module per command group; a command's
modules load only when it runs (`inspect` builds only its own parser), so the CLI starts fast."""
from __future__ import annotations

import argparse
import os
import sys

from ..core.errors import ModelsmithError


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (for a fast start) only the `inspect` subcommand when that is what runs."""
    # a fixed help width: argparse would otherwise import shutil (for the terminal size) at start-up
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 100

    def formatter(prog):
        return argparse.HelpFormatter(prog, width=width)
    p = argparse.ArgumentParser(prog="python -m modelsmith", formatter_class=formatter,
                                description="Modelsmith: know, load, prompt and convert image-generation checkpoints.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from . import inspect as inspect_cmd
    inspect_cmd.register(sub, formatter)
    if command != "inspect":
        from . import doctor, prompt, tools, workflows
        for group in (prompt, tools, workflows, doctor):
            group.register(sub)
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
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
