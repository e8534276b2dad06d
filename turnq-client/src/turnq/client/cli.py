"""The client's ``turnq`` subcommands: ``run``, ``channels``, ``create``, ``queue``, ``watch``, ``release``.

They are registered through the ``turnq_register_commands`` hook. This module imports only what argument parsing
needs, so ``turnq`` starts fast; the client machinery is imported when a command runs.

``turnq run`` exit statuses: the command's own status (128+N when it died of signal N); 124 when ``--timeout``
ran out before the turn came; 125 when turnq itself failed (no server, turn lost); 126/127 when the command could
not be started or was not found (as shells do); 130/143 when interrupted while waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from turnq.core import hookimpl

if TYPE_CHECKING:
    from .http import TurnqClient


def _duration(text: str) -> float:
    from .durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_ms(text: str) -> int:
    value = round(_duration(text) * 1000)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than a millisecond")
    return value


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server URL(s), comma-separated (default: $TURNQ_URL)")
    p.add_argument("--api-key", help="API key (default: $TURNQ_API_KEY)")


def _err(message: str) -> None:
    print(f"turnq: {message}", file=sys.stderr)


def _client(args: argparse.Namespace) -> TurnqClient:
    from .endpoints import key_from_env, urls_from_env
    from .http import TurnqClient

    urls = urls_from_env(args.url)
    if not urls:
        raise SystemExit(_usage_error("no server: pass --url or set TURNQ_URL"))
    return TurnqClient(urls, key_from_env(args.api_key))


def _usage_error(message: str) -> int:
    _err(message)
    return 2


def _guard(fn: Any) -> Any:
    """Turn a TurnqError into a one-line message and exit status 1 instead of a traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        from turnq.core import TurnqError

        try:
            return int(fn(args))
        except TurnqError as exc:
            _err(f"{exc.code.value}: {exc.message}")
            return 1
        except KeyboardInterrupt:
            return 130

    return wrapper


# ---------------------------------------------------------------------------------------- run


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .run import run_command

    command = list(args.argv)
    if command and command[0].startswith("-"):
        # argparse drops a ``--`` that directly follows CHANNEL; one still here ends options written after
        # CHANNEL (``turnq run CHANNEL --local -- CMD``), which landed in the remainder.
        if "--" not in command:
            return _usage_error("end the options with --: turnq run CHANNEL [OPTIONS] -- COMMAND [ARGS...]")
        cut = command.index("--")
        options, command = command[:cut], command[cut + 1 :]
        args.parser.parse_args([*options, args.channel], namespace=args)
    if not command:
        return _usage_error("nothing to run: turnq run CHANNEL -- COMMAND [ARGS...]")
    return asyncio.run(
        run_command(
            args.channel,
            command,
            url=args.url,
            api_key=args.api_key,
            local=args.local,
            fallback=not args.no_fallback,
            wait_timeout=args.timeout,
            lease_ms=args.lease,
            quiet=args.quiet,
        )
    )


# ---------------------------------------------------------------------------------------- admin


def _ms(value: int | None) -> str:
    from .durations import format_duration

    return "-" if value is None else format_duration(value / 1000)


@_guard
def _channels(args: argparse.Namespace) -> int:
    with _client(args) as client:
        channels = client.list_channels()
    if args.json:
        print(json.dumps([_channel_json(c) for c in channels], indent=2))
        return 0
    if not channels:
        print("no channels")
        return 0
    rows = [("CHANNEL", "LEASE", "DEPTH", "HOLDER")]
    for c in channels:
        rows.append((c.name, _ms(c.lease_ms), str(c.depth), c.holder.client_id if c.holder else "-"))
    _table(rows)
    return 0


def _channel_json(c: Any) -> dict[str, Any]:
    return {
        "name": c.name,
        "leaseMs": c.lease_ms,
        "maxDepth": c.max_depth,
        "maxWaitMs": c.max_wait_ms,
        "graceMs": c.grace_ms,
        "depth": c.depth,
        "active": c.active,
        "holder": c.holder.client_id if c.holder else None,
    }


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


@_guard
def _create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        channel = client.create_channel(
            args.channel,
            lease_ms=args.lease,
            max_depth=args.max_depth,
            max_wait_ms=args.max_wait,
            grace_ms=args.grace,
        )
    print(f"created {channel.name!r} (lease {_ms(channel.lease_ms)})")
    return 0


@_guard
def _queue(args: argparse.Namespace) -> int:
    if args.local:
        from .local import LocalQueue

        entries = LocalQueue().entries(args.channel)
        if args.json:
            print(json.dumps([{"ticket": e.number, "pid": e.pid, "holding": e.holding} for e in entries]))
            return 0
        if not entries:
            print(f"{args.channel}: nobody holds or waits (local)")
        for i, e in enumerate(entries):
            role = "holder" if e.holding else f"waiting #{i}"
            print(f"{role:<12} ticket {e.number}  pid {e.pid if e.pid is not None else '?'}")
        return 0
    with _client(args) as client:
        view = client.queue(args.channel)
    if args.json:
        holder = view.holder
        print(
            json.dumps(
                {
                    "channel": view.channel,
                    "depth": view.depth,
                    "holder": None
                    if holder is None
                    else {"clientId": holder.client_id, "fencingToken": holder.fencing_token},
                    "queue": [
                        {"clientId": w.client_id, "position": w.position, "waitingMs": w.waiting_ms}
                        for w in view.queue
                    ],
                },
                indent=2,
            )
        )
        return 0
    holder = view.holder
    if holder is None:
        print(f"{view.channel}: nobody holds")
    else:
        print(f"{view.channel}: held by {holder.client_id} (token {holder.fencing_token})")
    for w in view.queue:
        print(f"  {w.position:>4}. {w.client_id}  waiting {_ms(w.waiting_ms)}")
    return 0


@_guard
def _watch(args: argparse.Namespace) -> int:
    from .watch import watch

    with _client(args) as client:
        return watch(client, args.channel)


@_guard
def _release(args: argparse.Namespace) -> int:
    if not args.force:
        return _usage_error(
            "only an administrator's forced release is possible from here: turnq release --force CHANNEL"
        )
    with _client(args) as client:
        client.force_release(args.channel)
    print(f"released {args.channel!r}: the next ticket gets the turn")
    return 0


@hookimpl
def turnq_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a command inside a turn",
        description="Wait for a turn on CHANNEL, run COMMAND holding it (renewing the lease), then release it. "
        "The command sees TURNQ_CHANNEL and TURNQ_FENCING_TOKEN. Local file locks unless a server is "
        "configured (--url/$TURNQ_URL with --api-key/$TURNQ_API_KEY) and answers.",
        epilog="exit status: the command's; 124 wait timed out; 125 turnq failed or the turn was lost; "
        "126/127 command not executable/not found",
    )
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    _server_options(p)
    p.add_argument("--local", action="store_true", help="use local file locks even if a server is configured")
    p.add_argument("--no-fallback", action="store_true", help="fail instead of falling back to local mode")
    p.add_argument("--timeout", type=_duration, help="give up waiting after this long (e.g. 30s, 5m)")
    p.add_argument("--lease", type=_duration_ms, help="lease to ask for on each renewal (e.g. 60s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no position display while waiting")
    p.set_defaults(func=_run, parser=p)

    p = subparsers.add_parser("channels", help="list the server's channels")
    _server_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_channels)

    p = subparsers.add_parser("create", help="create a channel on the server")
    p.add_argument("channel", metavar="CHANNEL")
    _server_options(p)
    p.add_argument("--lease", type=_duration_ms, help="lease length, e.g. 60s (server default 30s)")
    p.add_argument("--max-depth", type=int, help="most tickets (holder included) the channel accepts")
    p.add_argument("--max-wait", type=_duration_ms, help="longest a waiter may wait, e.g. 10m")
    p.add_argument("--grace", type=_duration_ms, help="how long a dropped client keeps its place, e.g. 5s")
    p.set_defaults(func=_create)

    p = subparsers.add_parser("queue", help="show who holds a channel and who waits")
    p.add_argument("channel", metavar="CHANNEL")
    _server_options(p)
    p.add_argument("--local", action="store_true", help="show the local file-lock queue instead")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_queue)

    p = subparsers.add_parser("watch", help="follow a channel's turns and steps live")
    p.add_argument("channel", metavar="CHANNEL")
    _server_options(p)
    p.set_defaults(func=_watch)

    p = subparsers.add_parser("release", help="force-release a channel's current holder (admin)")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("--force", action="store_true", help="required: end whoever holds the turn now")
    _server_options(p)
    p.set_defaults(func=_release)


def main(argv: list[str] | None = None) -> int:
    """Run the client commands without the other plugins (``python -m turnq.client.cli``)."""
    parser = argparse.ArgumentParser(prog="turnq")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    turnq_register_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
