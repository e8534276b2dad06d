"""``turnq serve``: the command users run to start a server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from typing import Any

from turnq.core import TurnqError, UnknownBackendError, hookimpl, redact_url

log = logging.getLogger("turnq.server")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 3000)")
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="an admin API key (repeatable; default from TURNQ_API_KEY, comma-separated)",
    )
    p.add_argument(
        "--database-url",
        help="backend URL: memory://, sqlite:///path.db, postgresql://user@host/db "
        "(default from TURNQ_DATABASE_URL, else an embedded SQLite file)",
    )
    p.add_argument(
        "--config", dest="config_file", metavar="turnq.toml", help="config file (keys with roles, defaults)"
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="run without API keys (anyone who can reach the port is an admin)",
    )
    p.add_argument("--access-log", action="store_true", default=None, help="log every request (JSON lines)")
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it roughly halves the server's CPU per turn), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# The limit asked for when the hard limit is "unlimited" (which Linux does not grant as a soft limit).
UNLIMITED_FILES_TARGET = 1 << 20


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit, and return the limit in force.

    Every open stream is a connection and every connection a file descriptor, so the soft limit caps how many
    clients can wait at once. It is often 1,024, kept low for programs that still use ``select()``; the event
    loop here uses epoll, so it takes what the hard limit allows, as systemd advises such programs to do.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FILES_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def tune_gc() -> None:
    """Collect the young generation less often. A server with thousands of open streams holds hundreds of
    thousands of long-lived objects; with the default thresholds the full collections that scan all of them
    come often enough to make a turn's cost grow with the number of waiters."""
    gc.collect()
    gc.freeze()  # what exists after start-up is not garbage: keep it out of every later collection
    gc.set_threshold(50_000, 20, 100)


def serve(args: argparse.Namespace) -> int:
    # Imported here, not at module level: every `turnq` command loads this plugin, and only `serve` needs aiohttp.
    from aiohttp import web

    from .app import create_app
    from .config import ConfigError, build_config
    from .listener import listen
    from .logs import AccessLogger, configure_logging

    try:
        config = build_config(
            config_file=args.config_file,
            host=args.host,
            port=args.port,
            api_keys=args.api_keys,
            database_url=args.database_url,
            insecure_no_auth=args.insecure_no_auth,
            access_log=args.access_log,
            log_level=args.log_level,
        )
        configure_logging(config.log_level)
        app = create_app(config)
    except (ConfigError, UnknownBackendError) as exc:
        print(f"turnq serve: {exc}", file=sys.stderr)
        return 2
    if config.insecure_no_auth:
        log.warning(
            "running WITHOUT authentication (--insecure-no-auth): anyone who reaches the port is an admin"
        )
    try:
        sockets = listen(config.host, config.port)
    except OSError as exc:
        print(f"turnq serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    # The port actually bound, which --port 0 leaves to the system.
    port = sockets[0].getsockname()[1]
    serving = f"turnq serving on http://{config.host}:{port} with {redact_url(config.database_url)}"

    def say_serving(_aiohttp_banner: str) -> None:
        # Called once the backend is open and the port is bound, so the line is true when it appears.
        print(serving, file=sys.stderr, flush=True)

    files = raise_open_file_limit()
    log.info("open-file limit (each open stream takes one)", extra={"open_files": files})
    tune_gc()
    try:
        web.run_app(
            app,
            sock=sockets,
            handler_cancellation=True,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
            print=say_serving,
            shutdown_timeout=10,
            loop=new_event_loop(),
        )
    except TurnqError as exc:
        print(f"turnq serve: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"turnq serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


@hookimpl
def turnq_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("serve", help="run a turnq server", description="Run a turnq HTTP/SSE server.")
    add_serve_arguments(p)
    p.set_defaults(func=serve)
