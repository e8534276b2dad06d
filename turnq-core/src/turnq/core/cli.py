"""The ``turnq`` command. Its subcommands come from the ``turnq_register_commands`` hook, so each installed
distribution adds its own (``turnq serve`` from turnq-server, ``turnq run`` from turnq-client)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .plugins import get_plugin_manager


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnq", description="turnq: a FIFO turn coordinator.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    get_plugin_manager().hook.turnq_register_commands(subparsers=subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
