"""The SQLite backend (``sqlite:///path/to/turnq.db``): durable and embedded, for one server process.

One process serves a SQLite file (:mod:`.lock` makes sure), so the file need not be read to decide anything: the
backend loads the whole store when it opens and keeps it in memory as the memory backend does, and the file is
its journal. A unit runs the rules against memory (:class:`~.unit.JournalUnit` records what it changed), hands
the matching SQL to the :class:`~.journal.Journal`, and is done when that is committed; nothing is published, and
no caller answered, before its commit. Units ending together share one transaction (group commit), so a busy
server commits far less often than it changes state, and a turn costs no read of the file at all.

A commit that fails (the disk, another program holding the file's write lock past the busy timeout) fails its
units with 503 and every unit behind them; the backend then reloads its state from the file, which holds exactly
what was committed, and the server re-attaches its streams and brings them up to date.

Events go to this process's listeners only; use PostgreSQL to run several servers on one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiosqlite
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from turnq.backends.sql import ListenerSet
from turnq.backends.sql.rows import channel_from_row, ticket_from_row
from turnq.backends.sql.schema import migrate
from turnq.core import (
    Backend,
    ChannelSpec,
    ChannelUnit,
    ChannelView,
    ErrorCode,
    EventBatch,
    Listener,
    TurnqError,
    redact_url,
    wall_ms,
)
from turnq.core.limits import SUBSCRIBE_WINDOW_MS
from turnq.core.memory import MemoryUnit, lock_channel
from turnq.core.service import nearest_deadline

from . import statements as q
from .journal import Journal
from .lock import StoreLock
from .unit import JournalUnit, StoredChannel
from .url import parse_sqlite_url
from .writer import Writer, rollback, unavailable

log = logging.getLogger("turnq.backends.sqlite")

Rows = list[Sequence[Any]]


class SqliteBackend(Backend):
    """State in memory, journaled to one SQLite file in WAL mode; events in process."""

    name = "sqlite"
    durable = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.options = parse_sqlite_url(url)
        self._lock = StoreLock(self.options.path)
        self._engine: AsyncEngine | None = None
        self._writer_conn: AsyncConnection | None = None
        self._writer: Writer | None = None
        self._journal: Journal | None = None
        self._listeners = ListenerSet()
        self._channels: dict[str, StoredChannel] = {}
        self._next_id = 1
        # Set when a commit failed: memory is ahead of the file until the state is reloaded.
        self._broken: TurnqError | None = None
        self._reloading = asyncio.Lock()
        # After a reload every ticket is detached; the next heartbeat says so, and the server re-attaches.
        self._detached_all = False
        self.migrated: tuple[int, int] = (0, 0)  # the schema versions before and after the last open

    # ---------------------------------------------------------------- lifecycle

    def _make_engine(self) -> AsyncEngine:
        engine = create_async_engine(sa.URL.create("sqlite+aiosqlite", database=self.options.path))
        sync = self.options.synchronous.upper()
        busy = self.options.busy_timeout_ms

        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_conn: Any, record: Any) -> None:
            # turnq issues BEGIN itself, so the driver must not open transactions.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy)}")
            cur.execute(f"PRAGMA synchronous = {sync}")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # Take the write lock up front, so a migration never fails to upgrade its lock halfway.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    async def open(self) -> None:
        if self._writer is not None:
            return
        await asyncio.to_thread(_ensure_directory, self.options.path)
        await asyncio.to_thread(self._lock.acquire)
        engine = self._make_engine()
        try:
            conn = await engine.connect()
            raw = await conn.get_raw_connection()
            self._engine, self._writer_conn = engine, conn
            assert isinstance(raw.driver_connection, aiosqlite.Connection)
            writer = self._writer = Writer(raw.driver_connection)
            # WAL makes a commit one append to the log; it is a property of the file, set outside a transaction.
            mode = await writer.run(lambda c: c.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                log.warning("SQLite at %s runs in %s mode, not WAL", redact_url(self.url), mode)
            self.migrated = await self._migrate()
            self._load(*await writer.run(_read_store))
            self._journal = Journal(writer, self._listeners.publish, self._commit_failed, self._count_commit)
        except BaseException:
            await self.close()
            await engine.dispose()
            raise

    async def upgrade(self) -> tuple[int, int]:
        """Apply the schema's forward migrations (``open`` does this too); returns (version before, after)."""
        if self._writer is not None:
            return self.migrated
        await self.open()
        try:
            return self.migrated
        finally:
            await self.close()

    async def _migrate(self) -> tuple[int, int]:
        conn = self._writer_conn
        assert conn is not None
        try:
            async with conn.begin():
                result: tuple[int, int] = await conn.run_sync(
                    migrate, redact_url(self.url), time.time_ns() // 1_000_000
                )
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from exc
        if result[0] != result[1]:
            log.info("migrated %s from schema %d to %d", redact_url(self.url), *result)
        return result

    async def close(self) -> None:
        if self._journal is not None:
            await self._journal.wait_idle()
        conn, engine = self._writer_conn, self._engine
        self._writer = self._writer_conn = self._engine = self._journal = None
        self._channels = {}
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        if engine is not None:
            await engine.dispose()
        self._lock.release()

    def _open_writer(self) -> Writer:
        if self._writer is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the SQLite backend is not open")
        return self._writer

    def _open_journal(self) -> Journal:
        if self._journal is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the SQLite backend is not open")
        return self._journal

    # ---------------------------------------------------------------- the state in memory

    def _load(self, channel_rows: Rows, ticket_rows: Rows) -> None:
        by_id: dict[int, StoredChannel] = {}
        for r in channel_rows:
            row = channel_from_row(r)
            state = StoredChannel(row.spec, row.id)
            state.fencing, state.seq, state.version, state.holder = (
                row.fencing,
                row.seq,
                row.version,
                row.holder,
            )
            by_id[row.id] = state
        for r in ticket_rows:
            owner = by_id.get(r[0])
            if owner is not None:
                owner.add(ticket_from_row(r, 1))
        for old in self._channels.values():
            old.stale = True
        self._channels = {s.spec.name: s for s in by_id.values()}
        self._next_id = max(by_id, default=0) + 1

    def _commit_failed(self, error: TurnqError) -> None:
        log.error("a commit to %s failed; reloading from the file: %s", redact_url(self.url), error.message)
        self._broken = error
        for state in self._channels.values():
            state.stale = True

    async def _ready_journal(self) -> Journal:
        """The journal, with the state in memory reloaded first if a commit failed."""
        journal = self._open_journal()
        await self._ready()
        return journal

    async def _ready(self) -> None:
        """Reload the state from the file if a commit failed since it was loaded (once, for every waiter)."""
        if self._broken is None:
            return
        async with self._reloading:
            if self._broken is None:
                return
            writer = self._writer
            if writer is None:
                raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the SQLite backend is not open")
            self._load(*await writer.run(_read_store))
            self._broken = None
            self._detach_all(wall_ms(), SUBSCRIBE_WINDOW_MS)
            self._detached_all = True
            for name, state in self._channels.items():
                self._listeners.publish(
                    EventBatch(
                        name, (), await nearest_deadline(MemoryUnit(state)), len(state.tickets), resync=True
                    )
                )
            log.warning("reloaded %s after a failed commit", redact_url(self.url))

    def _detach_all(self, now: int, min_window_ms: int) -> None:
        for state in self._channels.values():
            window = max(state.spec.grace_ms, min_window_ms)
            for ticket in state.tickets.values():
                ticket.attachment = None
                ticket.grace_deadline = now + window
            state.reindex()

    # ---------------------------------------------------------------- channels

    async def create_channel(self, spec: ChannelSpec) -> None:
        journal = await self._ready_journal()
        if spec.name in self._channels:
            raise TurnqError(ErrorCode.CHANNEL_EXISTS, f"channel {spec.name!r} already exists")
        state = StoredChannel(spec, self._next_id)
        self._next_id += 1
        self._channels[spec.name] = state
        params = (state.id, spec.name, spec.lease_ms, spec.max_depth, spec.max_wait_ms, spec.grace_ms)
        await journal.commit([(q.INSERT_CHANNEL, (*params, spec.created_at))], None)

    async def get_channel(self, name: str) -> ChannelView | None:
        journal = await self._ready_journal()
        state = self._channels.get(name)
        view = state.view() if state is not None and not state.deleted else None
        # Answered once what it shows is on disk: a failing commit could still take it back.
        await journal.commit([], None)
        return view

    async def list_channels(self) -> list[ChannelView]:
        journal = await self._ready_journal()
        views = [s.view() for _, s in sorted(self._channels.items()) if not s.deleted]
        # Answered once what it shows is on disk: a failing commit could still take it back.
        await journal.commit([], None)
        return views

    # ---------------------------------------------------------------- units

    def unit(self, channel: str) -> AbstractAsyncContextManager[ChannelUnit]:
        return self._unit(channel)

    async def _locked(self, channel: str) -> StoredChannel:
        """The channel's current state, its lock held."""
        while True:
            if self._broken is not None:
                await self._ready()
            state = await lock_channel(self._channels, channel)
            if not state.stale:
                return state
            state.lock.release()  # reloaded while we waited: start again on the new state

    @asynccontextmanager
    async def _unit(self, channel: str) -> AsyncIterator[ChannelUnit]:
        journal = self._open_journal()
        state = await self._locked(channel)
        try:
            unit = JournalUnit(state)
            try:
                yield unit
            except BaseException:
                unit.undo()
                raise
            if state.stale:  # a commit failed while the body ran: what it saw was never on disk
                unit.undo()
                raise self._broken or unavailable(RuntimeError("the store was reloaded"))
            writes = unit.writes()
            batch = unit.batch()
            if state.deleted:
                self._channels.pop(channel, None)
            done = journal.submit(writes, batch)
        finally:
            state.lock.release()
        # The next unit on the channel may run now, on what this one left; the journal commits them in order.
        # If this caller is cancelled while waiting, the commit (and the publishing) goes on without it.
        if done is not None:
            await done

    def _count_commit(self) -> None:
        self.unit_commits += 1

    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # ---------------------------------------------------------------- whole-store operations

    async def deadlines(self) -> dict[str, int]:
        await self._ready_journal()
        out = {}
        for name, state in self._channels.items():
            deadline = await nearest_deadline(MemoryUnit(state))
            if deadline is not None:
                out[name] = deadline
        return out

    async def restart_grace(self, now: int, min_window_ms: int) -> None:
        await self._ready_journal()
        self._detach_all(now, min_window_ms)

    async def heartbeat(self, instance: str, now: int) -> bool:
        detached, self._detached_all = self._detached_all, False
        return not detached


def _read_store(c: sqlite3.Connection) -> tuple[Rows, Rows]:
    """Every channel and ticket, from one snapshot (runs on the writer's thread)."""
    rollback(c)
    c.execute("BEGIN")
    try:
        return c.execute(q.ALL_CHANNELS).fetchall(), c.execute(q.ALL_TICKETS).fetchall()
    finally:
        c.execute("ROLLBACK")


def _ensure_directory(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
