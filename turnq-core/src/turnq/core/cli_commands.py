"""The commands core itself adds to ``turnq``: ``turnq backends``, ``turnq plugins`` and ``turnq db upgrade``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from .errors import TurnqError
from .hookspecs import hookimpl
from .plugins import UnknownBackendError, backend_schemes, open_backend, plugin_list, redact_url


def _backends(args: argparse.Namespace) -> int:
    for scheme, factory in sorted(backend_schemes().items()):
        module = getattr(factory, "__module__", "?")
        print(f"{scheme}://\t{module}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    print(json.dumps(plugin_list(), indent=2))
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    url = args.database_url or os.environ.get("TURNQ_DATABASE_URL")
    if not url:
        print("turnq db upgrade: no database: pass --database-url or set TURNQ_DATABASE_URL", file=sys.stderr)
        return 2
    shown = redact_url(url)
    try:
        before, after = asyncio.run(open_backend(url).upgrade())
    except (UnknownBackendError, ValueError, TurnqError) as exc:
        print(f"turnq db upgrade: {shown}: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"{shown}: schema version {after}, nothing to upgrade")
    else:
        print(f"{shown}: schema upgraded from version {before} to {after}")
    return 0


@hookimpl
def turnq_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("backends", help="list the installed storage backends (URL schemes)")
    p.set_defaults(func=_backends)
    p = subparsers.add_parser("plugins", help="list the loaded plugins and the hooks they implement")
    p.set_defaults(func=_plugins)
    db = subparsers.add_parser("db", help="manage the database of a durable backend")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    p = db_commands.add_parser(
        "upgrade",
        help="apply the schema's forward migrations (servers also do this when they start)",
        description="Bring the database's turnq schema up to this version of turnq. A database written by a "
        "newer turnq is refused.",
    )
    p.add_argument("--database-url", help="the database (default: $TURNQ_DATABASE_URL)")
    p.set_defaults(func=_db_upgrade)
