"""Who may use the writing connection, and the handing of it from one unit to the next.

A unit's start (begin, read the channel) and end (write, commit) each need a trip to the connection's thread, and
under load the slow part of a trip is not SQLite but the event loop getting round to the result. So when a unit
ends while others wait, its end and the next unit's start go in one trip: the next unit is admitted with its
transaction already begun, one loop turn sooner. Holding the line is exclusive, as an asyncio lock would be, and
first come first served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any

from .writer import Writer, rollback, unavailable

log = logging.getLogger("turnq.backends.sqlite")

Work = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (succeeded, result or exception)


def _run(work: Work, c: sqlite3.Connection) -> Outcome:
    try:
        return True, work(c)
    except BaseException as exc:  # carried back to the unit it belongs to
        return False, exc


def raise_outcome(outcome: Outcome) -> Any:
    """The result of work run on the thread, or its exception (a database error as BACKEND_UNAVAILABLE)."""
    ok, value = outcome
    if ok:
        return value
    if isinstance(value, sqlite3.OperationalError):
        raise unavailable(value) from value
    raise value


class _Waiter:
    __slots__ = ("future", "start")

    def __init__(self, start: Work, future: asyncio.Future[Outcome]) -> None:
        self.start = start
        self.future = future


class Admission:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._held = False
        self._waiting: deque[_Waiter] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    async def enter(self, start: Work) -> Any:
        """Wait for the connection, run ``start`` on its thread as the holder's first work, and return its
        result; the caller then holds the connection until it calls :meth:`leave`. If this raises (``start``
        failed, which must leave no transaction open, or the wait was cancelled), the caller does not hold it."""
        if not self._held:
            self._held = True
            self._idle.clear()
            try:
                outcome = await self._writer.run(lambda c: _run(start, c))
            except asyncio.CancelledError:
                self.leave(rollback)  # the start goes on in the thread; end it once it is done
                raise
            except BaseException:
                self.leave(None)
                raise
        else:
            waiter = _Waiter(start, asyncio.get_running_loop().create_future())
            self._waiting.append(waiter)
            try:
                outcome = await waiter.future
            except asyncio.CancelledError:
                if waiter.future.done() and not waiter.future.cancelled():
                    self.leave(rollback)  # admitted in the same moment as cancelled
                else:
                    self._forget(waiter)
                raise
        if not outcome[0]:
            self.leave(None)
        return raise_outcome(outcome)

    def leave(
        self, finish: Work | None, after: Callable[[Outcome], None] | None = None
    ) -> asyncio.Future[Outcome]:
        """Run ``finish`` on the connection's thread as the holder's last work, then ``after`` with its outcome
        (on the event loop, before anyone else is admitted: commit order is publishing order). Returns the
        outcome; the next waiter's start runs in the same trip."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Outcome] = loop.create_future()
        nxt = self._next()
        if finish is None and nxt is None:
            result.set_result((True, None))
            self._release()
            return result

        def trip(c: sqlite3.Connection) -> tuple[Outcome, Outcome | None]:
            done = _run(finish, c) if finish is not None else (True, None)
            return done, (_run(nxt.start, c) if nxt is not None else None)

        def arrived(task: asyncio.Task[tuple[Outcome, Outcome | None]]) -> None:
            if task.cancelled():
                done: Outcome = (False, asyncio.CancelledError())
                begun: Outcome | None = done
            elif task.exception() is not None:  # the connection itself failed (closed)
                done = begun = (False, task.exception())
            else:
                done, begun = task.result()
            if after is not None:
                try:
                    after(done)
                except Exception:
                    log.exception("publishing a committed batch failed")
            result.set_result(done)
            if nxt is None:
                self._admit_next()
            elif nxt.future.cancelled():
                # The waiter gave up while its start was on the way: end that too, and go on.
                self.leave(rollback if begun is not None and begun[0] else None)
            else:
                assert begun is not None
                nxt.future.set_result(begun)  # it holds the connection now, whatever its start gave

        asyncio.ensure_future(self._writer.run(trip)).add_done_callback(arrived)
        return result

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def _next(self) -> _Waiter | None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                return waiter
        return None

    def _admit_next(self) -> None:
        if self._waiting:
            self.leave(None)  # a trip that only starts the next waiter
        else:
            self._release()

    def _release(self) -> None:
        self._held = False
        self._idle.set()

    def _forget(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(waiter)
