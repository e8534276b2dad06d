"""The SQLite backend (``sqlite:///path/to/turnq.db``): durable and embedded, for one server process.

One writing connection, held for the backend's life, carries every unit of work: ``BEGIN IMMEDIATE``, the
channel row and a probe of its tickets in one trip to the connection's thread, reads the unit's caches cannot
answer, then every pending write and ``COMMIT`` in one more trip, which also begins the next waiting unit
(:mod:`.admission` hands the connection from unit to unit, one at a time). Views (``get_channel``, ``list_channels``, ``deadlines``) read through SQLAlchemy on other connections,
which WAL lets run beside the writer.

Events are published to this process's listeners after the commit. Other processes that open the same file
share its state but not its events, so SQLite serves one ``turnq serve`` at a time; use PostgreSQL to run
several.
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
from turnq.backends.sql import ListenerSet, SqlUnit, views
from turnq.backends.sql.line import PROBE_RANKS
from turnq.backends.sql.rows import ChannelRow, channel_from_row, spec_params, ticket_from_row
from turnq.backends.sql.schema import migrate
from turnq.backends.sql.unit import PROBE_FOUND, PROBE_GRACE, PROBE_LINE, PROBE_LINE_FROM_END, PROBE_WAIT
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
)

from . import statements as q
from .admission import Admission, Outcome, raise_outcome
from .unit import SqliteUnit, write_unit
from .url import parse_sqlite_url
from .writer import Writer, rollback, unavailable

log = logging.getLogger("turnq.backends.sqlite")

_WRITER = "turnq_writer"


class SqliteBackend(Backend):
    """State in one SQLite file in WAL mode; events in process."""

    name = "sqlite"
    durable = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.options = parse_sqlite_url(url)
        self._engine: AsyncEngine | None = None
        self._writer_conn: AsyncConnection | None = None
        self._writer: Writer | None = None
        self._listeners = ListenerSet()
        self._admission: Admission | None = None
        self.migrated: tuple[int, int] = (0, 0)  # the schema versions before and after the last open

    # ---------------------------------------------------------------- lifecycle

    def _make_engine(self) -> AsyncEngine:
        engine = create_async_engine(sa.URL.create("sqlite+aiosqlite", database=self.options.path))
        sync = self.options.synchronous.upper()
        busy = self.options.busy_timeout_ms

        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_conn: Any, record: Any) -> None:
            # turnq issues BEGIN itself (below and in the unit), so the driver must not open transactions.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy)}")
            cur.execute(f"PRAGMA synchronous = {sync}")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # The writer takes the write lock up front, so a transaction never fails to upgrade halfway.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITER) else "BEGIN")

        return engine

    async def open(self) -> None:
        if self._writer is not None:
            return
        await asyncio.to_thread(_ensure_directory, self.options.path)
        engine = self._make_engine()
        try:
            conn = await engine.connect()
            conn.info[_WRITER] = True
            raw = await conn.get_raw_connection()
            self._engine, self._writer_conn = engine, conn
            assert isinstance(raw.driver_connection, aiosqlite.Connection)
            self._writer = Writer(raw.driver_connection)
            self._admission = Admission(self._writer)
            # WAL lets views read beside the writer and makes a commit one append; it is a property of the
            # file, set outside any transaction.
            mode = await self._writer.run(lambda c: c.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                log.warning("SQLite at %s runs in %s mode, not WAL", redact_url(self.url), mode)
            self.migrated = await self._migrate()
        except BaseException:
            await self.close()
            await engine.dispose()
            raise

    async def upgrade(self) -> tuple[int, int]:
        """Apply the schema's forward migrations (``open`` does this too); returns (version before, after)."""
        if self._writer is not None:
            return await self._migrate()
        await self.open()
        try:
            return self.migrated
        finally:
            await self.close()

    async def _migrate(self) -> tuple[int, int]:
        conn, admission = self._writer_conn, self._admission
        assert conn is not None and admission is not None
        await admission.enter(_nothing)
        try:
            async with conn.begin():
                result: tuple[int, int] = await conn.run_sync(
                    migrate, redact_url(self.url), time.time_ns() // 1_000_000
                )
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from exc
        finally:
            admission.leave(None)
        if result[0] != result[1]:
            log.info("migrated %s from schema %d to %d", redact_url(self.url), *result)
        return result

    async def close(self) -> None:
        if self._admission is not None:
            await self._admission.wait_idle()
        conn, engine = self._writer_conn, self._engine
        self._writer = self._writer_conn = self._engine = self._admission = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        if engine is not None:
            await engine.dispose()

    def _open_writer(self) -> Writer:
        if self._writer is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the SQLite backend is not open")
        return self._writer

    def _open_admission(self) -> Admission:
        if self._admission is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the SQLite backend is not open")
        return self._admission

    def _open_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the SQLite backend is not open")
        return self._engine

    # ---------------------------------------------------------------- channels

    async def create_channel(self, spec: ChannelSpec) -> None:
        params = spec_params(spec)

        def insert(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(q.INSERT_CHANNEL, params)
            except sqlite3.IntegrityError:
                c.execute("ROLLBACK")
                return False
            except BaseException:
                rollback(c)
                raise
            c.execute("COMMIT")
            return True

        admission = self._open_admission()
        created = await admission.enter(insert)
        admission.leave(None)
        if not created:
            raise TurnqError(ErrorCode.CHANNEL_EXISTS, f"channel {spec.name!r} already exists")

    async def _read(self, stmt: sa.Executable) -> list[Sequence[Any]]:
        try:
            async with self._open_engine().connect() as conn:
                return list((await conn.execute(stmt)).all())
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from exc

    async def get_channel(self, name: str) -> ChannelView | None:
        rows = await self._read(views.select_channel(name))
        return views.channel_views(rows)[0] if rows else None

    async def list_channels(self) -> list[ChannelView]:
        return views.channel_views(await self._read(views.select_channels()))

    # ---------------------------------------------------------------- units

    def unit(self, channel: str) -> AbstractAsyncContextManager[ChannelUnit]:
        return self._unit(channel, None, None)

    def unit_for_ticket(
        self, channel: str, *, client_id: str | None = None, request_id: str | None = None
    ) -> AbstractAsyncContextManager[ChannelUnit]:
        return self._unit(channel, client_id, request_id)

    @asynccontextmanager
    async def _unit(
        self, channel: str, client_id: str | None, request_id: str | None
    ) -> AsyncIterator[ChannelUnit]:
        writer, admission = self._open_writer(), self._open_admission()
        row, probe = await admission.enter(lambda c: _begin(c, channel, client_id, request_id))
        error: BaseException | None = None
        try:
            probed = [(kind, rank, ticket_from_row(r)) for kind, rank, r in probe]
            unit = SqliteUnit(writer, channel_from_row(row), probed, client_id, request_id)
            yield unit
        except BaseException as exc:
            error = exc
        if error is not None:
            ending = admission.leave(rollback)
        else:
            ending = admission.leave(
                lambda c: _write_and_commit(c, unit), after=lambda done: self._publish(unit, done)
            )
        # The connection is the next unit's once this trip is done; the batch is published before that, so in
        # commit order. A cancellation here does not stop the trip (or the publishing).
        done = await asyncio.shield(ending)
        if error is not None:
            raise error
        raise_outcome(done)

    def _publish(self, unit: SqlUnit, done: Outcome) -> None:
        if done[0] and (unit.events or unit.concluded):
            self._listeners.publish(
                EventBatch(
                    unit.row.spec.name,
                    tuple(unit.events),
                    unit.next_deadline,
                    unit.depth_after,
                    deleted=unit.deleted,
                )
            )

    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # ---------------------------------------------------------------- whole-store operations

    async def deadlines(self) -> dict[str, int]:
        return views.deadlines_from_rows(await self._read(views.select_deadlines()))

    async def restart_grace(self, now: int, min_window_ms: int) -> None:
        def restart(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(q.RESTART_GRACE_TICKETS, (now, min_window_ms))
                c.execute(q.RESTART_GRACE_CHANNELS)
                c.execute("COMMIT")
            except BaseException:
                rollback(c)
                raise

        admission = self._open_admission()
        await admission.enter(restart)
        admission.leave(None)


def _begin(
    c: sqlite3.Connection, channel: str, client_id: str | None, request_id: str | None
) -> tuple[Any, list[tuple[int, int, Any]]]:
    """A unit's start: the write lock, the channel row and the probe of its tickets (rows, not yet Tickets)."""
    rollback(c)  # defensive: a transaction must never leak from one unit into the next
    c.execute("BEGIN IMMEDIATE")
    try:
        row = c.execute(q.SELECT_CHANNEL, (channel,)).fetchone()
        if row is None:
            raise TurnqError(ErrorCode.CHANNEL_NOT_FOUND, f"channel {channel!r} does not exist")
        return row, _probe(c, channel_from_row(row), client_id, request_id)
    except BaseException:
        rollback(c)
        raise


def _nothing(c: sqlite3.Connection) -> None:
    return None


def _probe(
    c: sqlite3.Connection, row: ChannelRow, client_id: str | None, request_id: str | None
) -> list[tuple[int, int, Any]]:
    """The probe's rows as ``(kind, rank, raw ticket row)`` (see SqlUnit), skipping what the channel row
    already answers: no tickets, nobody in grace, no maximum wait, a line short enough to read whole."""
    if row.ticket_count == 0:
        return []
    cid = row.id
    front = c.execute(q.FRONT, (cid,)).fetchall()
    whole = len(front) >= row.ticket_count
    out = [(PROBE_LINE, r, t) for r, t in enumerate(front) if whole or r in PROBE_RANKS]
    if not whole:
        out += [(PROBE_LINE_FROM_END, r, t) for r, t in enumerate(c.execute(q.TAIL, (cid,)))]
        if client_id is not None:
            out += [(PROBE_FOUND, 0, t) for t in c.execute(q.FIND_BY_CLIENT, (cid, client_id))]
        if request_id is not None:
            out += [(PROBE_FOUND, 0, t) for t in c.execute(q.FIND_BY_REQUEST, (cid, request_id))]
    if row.graced_count:
        out += [(PROBE_GRACE, 0, t) for t in c.execute(q.GRACES, (cid,))]
    if row.spec.max_wait_ms is not None:
        out += [(PROBE_WAIT, 0, t) for t in c.execute(q.WAITS, (cid,))]
    return out


def _ensure_directory(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _write_and_commit(c: sqlite3.Connection, unit: SqlUnit) -> None:
    try:
        if unit.changed:
            write_unit(c, unit)
        c.execute("COMMIT")
    except BaseException:
        rollback(c)
        raise
