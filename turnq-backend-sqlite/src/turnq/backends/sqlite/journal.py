"""Group commit: the writes of every unit that ended while a commit was on its way go to the file together.

A commit is one trip to the writing connection's thread (BEGIN IMMEDIATE, the writes, COMMIT); the trip, not
SQLite's work, is most of its cost. So units do not take turns at the connection: each hands its writes to the
journal and waits, and the journal sends whatever has gathered as one transaction as soon as the previous one is
done. Under load, many units share a commit; alone, a unit's commit starts at once.

Order is the units' order: entries are committed, then published and answered, in the order they were handed
in, so listeners hear batches in commit order and no one hears of a change before it is on disk. A unit that
wrote nothing (an attach, a read that concluded) is published at once if nothing is waiting before it, and
otherwise in its place after the commit ahead of it.

If a commit fails, its entries and every entry behind it fail (their units saw state the file never got), and
the backend is told so it can reload its state from the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

from turnq.core import EventBatch, TurnqError

from .unit import Write
from .writer import Writer, rollback, unavailable


class Entry:
    __slots__ = ("batch", "future", "writes")

    def __init__(self, writes: list[Write], batch: EventBatch | None, future: asyncio.Future[None]) -> None:
        self.writes = writes
        self.batch = batch
        self.future = future


def commit_writes(c: sqlite3.Connection, groups: list[list[Write]]) -> None:
    """One transaction holding every group's writes, in order (runs on the writer's thread)."""
    c.execute("BEGIN IMMEDIATE")
    try:
        for writes in groups:
            for sql, params in writes:
                if isinstance(params, list):
                    c.executemany(sql, params)
                else:
                    c.execute(sql, params)
        c.execute("COMMIT")
    except BaseException:
        rollback(c)
        raise


class Journal:
    def __init__(
        self,
        writer: Writer,
        publish: Callable[[EventBatch], None],
        failed: Callable[[TurnqError], None],
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._writer = writer
        self._publish = publish
        self._failed = failed
        self._pending: list[Entry] = []
        self._in_flight: list[Entry] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_commit = on_commit

    def submit(self, writes: list[Write], batch: EventBatch | None) -> asyncio.Future[None] | None:
        """Hand in a unit's writes and batch; returns a future that is done once they are committed and
        published, or None if there was nothing to wait for (no writes, nothing ahead: published already)."""
        if not writes and self._in_flight is None and not self._pending:
            if batch is not None:
                self._publish(batch)
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._in_flight is None and not self._pending:
            # Send at the end of this turn of the event loop, so units ending in the same turn share the commit.
            self._idle.clear()
            loop.call_soon(self._send)
        self._pending.append(Entry(writes, batch, future))
        return future

    async def commit(self, writes: list[Write], batch: EventBatch | None) -> None:
        """``submit``, and wait until it is committed and published."""
        done = self.submit(writes, batch)
        if done is not None:
            await done

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def _send(self) -> None:
        entries, self._pending = self._pending, []
        groups = [e.writes for e in entries if e.writes]
        if not groups:
            self._committed(entries)
            return
        self._in_flight = entries
        trip = asyncio.ensure_future(self._writer.run(lambda c: commit_writes(c, groups)))
        trip.add_done_callback(self._arrived)

    def _arrived(self, trip: asyncio.Future[None]) -> None:
        entries = self._in_flight or []
        self._in_flight = None
        error = None if trip.cancelled() else trip.exception()
        if trip.cancelled() or error is not None:
            failure = (
                error if isinstance(error, TurnqError) else unavailable(error or asyncio.CancelledError())
            )
            for entry in (*entries, *self._pending):
                if not entry.future.done():
                    entry.future.set_exception(failure)
            self._pending = []
            self._idle.set()
            self._failed(failure)
            return
        self._on_commit()
        self._committed(entries)

    def _committed(self, entries: list[Entry]) -> None:
        """Publish and answer committed entries in order, then send what gathered meanwhile."""
        for entry in entries:
            if entry.batch is not None:
                self._publish(entry.batch)
            if not entry.future.done():  # its unit's caller may have gone; the commit stands
                entry.future.set_result(None)
        if self._pending:
            self._send()
        else:
            self._idle.set()
