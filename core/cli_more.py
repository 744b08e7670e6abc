"""Subcommands beyond inspect; each registers itself on the CLI's subparsers."""
from __future__ import annotations


def register(sub) -> None:
    pass
