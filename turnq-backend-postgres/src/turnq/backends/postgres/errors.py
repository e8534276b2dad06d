"""Which failures mean "the database cannot be reached right now" (HTTP 503) rather than a bug."""

from __future__ import annotations

import asyncio

import asyncpg
import sqlalchemy as sa
from turnq.core import ErrorCode, TurnqError

# Server errors that say the server is going away, starting, overloaded, or that a wait ran out; the request
# may succeed if retried. Everything else from the server is a bug and stays a 500.
_TRANSIENT_SERVER = (
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect now, 57014…
    asyncpg.exceptions.PostgresConnectionError,  # class 08
    asyncpg.exceptions.InsufficientResourcesError,  # class 53 (too many connections, out of memory)
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.TransactionRollbackError,  # deadlock detected, serialization failure
)

# An idle connection that received the server's FATAL (57P01 when PostgreSQL shuts down) before asyncpg processed
# the socket's close still says is_closed() False, and its next statement fails inside asyncpg with "cannot switch
# to state 15; another operation (2) is in progress": the connection is gone, whatever the message says.
_DEAD_CONNECTION = (asyncpg.exceptions.InternalClientError,)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = getattr(exc.orig, "__cause__", None) or exc.orig
        return orig is not None and orig is not exc and is_unavailable(orig)
    return isinstance(
        exc,
        (
            OSError,
            asyncio.TimeoutError,
            asyncpg.exceptions.InterfaceError,
            sa.exc.TimeoutError,  # no pooled connection free in time
            *_TRANSIENT_SERVER,
            *_DEAD_CONNECTION,
        ),
    )


def is_connection_lost(exc: BaseException) -> bool:
    """The connection itself is unusable (as opposed to one statement failing on a healthy connection)."""
    return isinstance(
        exc,
        (
            OSError,
            asyncio.TimeoutError,
            asyncpg.exceptions.InterfaceError,
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,
            *_DEAD_CONNECTION,
        ),
    ) and not isinstance(exc, asyncpg.exceptions.QueryCanceledError)


def unavailable(exc: BaseException) -> TurnqError:
    detail = str(exc).strip() or type(exc).__name__
    return TurnqError(ErrorCode.BACKEND_UNAVAILABLE, f"the PostgreSQL database is unavailable: {detail}")
