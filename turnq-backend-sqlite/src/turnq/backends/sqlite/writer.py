"""The process's one writing connection, and the way work reaches its thread.

aiosqlite runs each call on the connection's own thread and hands the result back to the event loop; that hop
costs several times more than SQLite's work for a small indexed statement. So the backend sends a whole step
of a unit (begin, lock-read and probe; or every pending write plus the commit) as one function run on that
thread: one hop per step instead of one per statement, and never a blocking call on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiosqlite
from turnq.core import ErrorCode, TurnqError

T = TypeVar("T")


class Writer:
    """Runs functions against the writing ``sqlite3.Connection`` on aiosqlite's thread for it.

    ``lock`` serialises this process's writers, so a unit never meets SQLITE_BUSY from its own process; the
    connection's busy timeout covers other processes (``turnq db upgrade``, an admin tool).
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._aconn = connection
        self.lock = asyncio.Lock()
        # aiosqlite's queue-a-function primitive; it is what every public aiosqlite call is built on.
        self._submit: Callable[..., Any] = connection._execute

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            result: T = await self._submit(lambda: fn(self._aconn._conn))
        except sqlite3.OperationalError as exc:
            raise unavailable(exc) from exc
        return result


async def queued(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start ``work`` (whose first step is a ``Writer.run``) and return once its function is queued on the
    connection's thread.

    The event loop runs a new task's first step before it resumes a coroutine that yielded after creating it,
    and ``Writer.run`` queues its function within that step; so whatever the caller queues afterwards runs on
    the thread after this, even once the caller has let go of the writer lock.
    """
    task = asyncio.ensure_future(work)
    await asyncio.sleep(0)
    return task


def unavailable(exc: BaseException) -> TurnqError:
    return TurnqError(ErrorCode.BACKEND_UNAVAILABLE, f"the SQLite database is unavailable: {exc}")


def rollback(c: sqlite3.Connection) -> None:
    if c.in_transaction:
        c.execute("ROLLBACK")
