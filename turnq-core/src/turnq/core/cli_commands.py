"""The commands core itself adds to ``turnq``: ``turnq backends`` and ``turnq plugins``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .hookspecs import hookimpl
from .plugins import backend_schemes, plugin_list


def _backends(args: argparse.Namespace) -> int:
    for scheme, factory in sorted(backend_schemes().items()):
        module = getattr(factory, "__module__", "?")
        print(f"{scheme}://\t{module}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    print(json.dumps(plugin_list(), indent=2))
    return 0


@hookimpl
def turnq_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("backends", help="list the installed storage backends (URL schemes)")
    p.set_defaults(func=_backends)
    p = subparsers.add_parser("plugins", help="list the loaded plugins and the hooks they implement")
    p.set_defaults(func=_plugins)
