"""The process's one writing connection, and the way work reaches its thread.

aiosqlite runs each call on the connection's own thread and hands the result back to the event loop; that hop
costs several times more than SQLite's work for a small keyed statement. So the backend sends a whole piece of
work (loading the store, or a group commit: BEGIN, every gathered write, COMMIT) as one function run on that
thread: one hop per piece instead of one per statement, and never a blocking call on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite
from turnq.core import ErrorCode, TurnqError

T = TypeVar("T")


class Writer:
    """Runs functions against the writing ``sqlite3.Connection`` on aiosqlite's thread for it.

    Only :class:`~.journal.Journal` writes through it, one transaction at a time, so commits never meet
    SQLITE_BUSY from this process; the connection's busy timeout covers another program holding the file's write
    lock (an admin tool).
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._aconn = connection
        # aiosqlite's queue-a-function primitive; it is what every public aiosqlite call is built on.
        self._submit: Callable[..., Any] = connection._execute

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            result: T = await self._submit(lambda: fn(self._aconn._conn))
        except sqlite3.OperationalError as exc:
            raise unavailable(exc) from exc
        return result


def unavailable(exc: BaseException) -> TurnqError:
    return TurnqError(ErrorCode.BACKEND_UNAVAILABLE, f"the SQLite database is unavailable: {exc}")


def rollback(c: sqlite3.Connection) -> None:
    if c.in_transaction:
        c.execute("ROLLBACK")
