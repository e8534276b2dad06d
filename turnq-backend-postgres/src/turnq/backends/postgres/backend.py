"""The PostgreSQL backend (``postgresql://user@host/db``): durable, and shared by any number of servers.

A unit of work takes a pooled connection, begins a transaction, and locks and reads the channel row with a probe
of its tickets in one statement (``SELECT … FOR UPDATE``); reads its caches cannot answer go to the same
connection; on commit, every pending write, the channel row, the ``NOTIFY`` of the unit's batch and ``COMMIT``
go as one script: a release that grants the next ticket is three round trips. Units on one channel in this
process queue on an asyncio lock first, so they do not each hold a pooled connection while they wait for the row
lock.

Every process hears every committed batch: its own right after commit, the others' through ``LISTEN``
(:mod:`.feed`). When the server goes away, operations fail fast with ``BACKEND_UNAVAILABLE`` (connect and
statement waits are bounded), pooled connections found dead are replaced, and the listener reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from turnq.backends.sql import ListenerSet, views
from turnq.backends.sql.rows import N_CHANNEL, channel_from_row, spec_params
from turnq.backends.sql.schema import channels, migrate, tickets
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

from . import presence
from . import statements as q
from .errors import is_connection_lost, is_unavailable, unavailable
from .feed import Feed
from .group import Group, Held
from .payload import Envelope, encode
from .spares import Spares
from .unit import PostgresUnit, probe_rows
from .url import parse_postgres_url

log = logging.getLogger("turnq.backends.postgres")

T = TypeVar("T")

# A channel that committed twice within BUSY_S is busy: its next group is started as soon as the last commits,
# and waits READY_S at most for a unit (holding the channel's row lock meanwhile), unless another server has
# committed on the channel within SHARED_S (it would be kept waiting).
BUSY_S = 0.01
READY_S = 0.003
SHARED_S = 2.0

# Serialises schema migrations across processes (a server starting while `turnq db upgrade` runs).
_MIGRATION_LOCK = 0x7475726E71  # "turnq"


class PostgresBackend(Backend):
    """State in PostgreSQL; events through LISTEN/NOTIFY to every process."""

    name = "postgresql"
    durable = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.options = parse_postgres_url(url)
        self.origin = uuid.uuid4().hex
        self._engine: AsyncEngine | None = None
        self._listeners = ListenerSet()
        self._feed: Feed | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The units waiting for each channel's lock, by the (client, request) each names.
        self._queued: dict[str, list[tuple[str | None, str | None]]] = {}
        self._groups: dict[str, Group] = {}  # open transactions handed from one unit to the next
        self._orphans: set[asyncio.Task[None]] = set()
        self._last_commit: dict[str, float] = {}  # loop time of each channel's last commit here
        self._shared_at: dict[str, float] = {}  # loop time another server last committed on each channel
        # Groups started ahead of their first unit, on busy channels (see _prepare_next).
        self._prepared: dict[str, tuple[asyncio.Task[Group | None], asyncio.TimerHandle]] = {}
        self._spares = Spares(min(4, max(1, self.options.pool_size // 2)), self._discard_spare)
        self.migrated: tuple[int, int] = (0, 0)  # the schema versions before and after the last open

    # ---------------------------------------------------------------- connections

    async def _connect(self) -> asyncpg.Connection:
        o = self.options
        settings = {
            "application_name": "turnq",
            "standard_conforming_strings": "on",  # the quoting rule of the commit script (see .literals)
            "lock_timeout": str(o.lock_timeout_ms),
            # A unit is a few milliseconds; a transaction left idle this long belongs to a stuck process and
            # must not keep a channel locked.
            "idle_in_transaction_session_timeout": str(max(60_000, int(o.command_timeout * 3000))),
        }
        if o.schema:
            settings["search_path"] = o.schema
        conn: asyncpg.Connection = await asyncpg.connect(
            o.dsn, timeout=o.connect_timeout, command_timeout=o.command_timeout, server_settings=settings
        )
        return conn

    def _make_engine(self) -> AsyncEngine:
        o = self.options
        engine = create_async_engine(
            "postgresql+asyncpg://",
            async_creator=self._connect,
            pool_size=o.pool_size,
            max_overflow=o.max_overflow,
            pool_timeout=o.pool_timeout,
        )

        @event.listens_for(engine.sync_engine, "checkout")
        def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            # asyncpg marks a connection closed as soon as the server drops it (a restart), so a stale pooled
            # connection is replaced here, without the round trip a pre-ping costs on every checkout.
            if dbapi_conn.driver_connection.is_closed():
                raise sa.exc.DisconnectionError("the pooled connection was closed by the server")

        return engine

    def _open_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the PostgreSQL backend is not open")
        return self._engine

    @asynccontextmanager
    async def _sa_connection(self) -> AsyncIterator[AsyncConnection]:
        try:
            conn = await self._open_engine().connect()
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        try:
            yield conn
        except Exception as exc:
            if is_unavailable(exc):
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                raise unavailable(exc) from exc
            raise
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        if self._engine is not None:
            return
        self._engine = self._make_engine()
        try:
            self.migrated = await self._migrate()
            self._listeners.add(self._note_other_servers)
            feed = Feed(self._listeners, self.origin, self.options.notify_channel, self._connect)
            feed.on_reconnect = self._resync
            await feed.start(self.options.connect_timeout + self.options.command_timeout)
            self._feed = feed
        except BaseException as exc:
            await self.close()
            if isinstance(exc, Exception) and is_unavailable(exc):
                raise unavailable(exc) from exc
            raise

    async def upgrade(self) -> tuple[int, int]:
        """Apply the schema's forward migrations (``open`` does this too); returns (version before, after)."""
        if self._engine is not None:
            return await self._migrate()
        self._engine = self._make_engine()
        try:
            return await self._migrate()
        finally:
            await self.close()

    async def _migrate(self) -> tuple[int, int]:
        async with self._sa_connection() as conn, conn.begin():
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            if self.options.schema:
                await conn.execute(sa.schema.CreateSchema(self.options.schema, if_not_exists=True))
            result: tuple[int, int] = await conn.run_sync(
                migrate, redact_url(self.url), time.time_ns() // 1_000_000
            )
        if result[0] != result[1]:
            log.info("migrated %s from schema %d to %d", redact_url(self.url), *result)
        return result

    async def close(self) -> None:
        for channel, (task, _) in list(self._prepared.items()):
            self._drop_prepared(channel, task)
        # A group still open (its next unit gave up at the very end) is committed before the connections go.
        for channel in list(self._groups):
            await self._commit_orphan(channel, self._lock_for(channel))
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=10)
        await self._spares.close()
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.stop()
        with contextlib.suppress(ValueError):
            self._listeners.remove(self._note_other_servers)
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    # ---------------------------------------------------------------- channels

    async def create_channel(self, spec: ChannelSpec) -> None:
        stmt = pg.insert(channels).values(**spec_params(spec)).on_conflict_do_nothing(index_elements=["name"])
        async with self._sa_connection() as conn, conn.begin():
            created = (await conn.execute(stmt.returning(channels.c.id))).first()
        if created is None:
            raise TurnqError(ErrorCode.CHANNEL_EXISTS, f"channel {spec.name!r} already exists")

    async def _read(self, stmt: sa.Executable) -> list[Sequence[Any]]:
        async with self._sa_connection() as conn:
            return list((await conn.execute(stmt)).all())

    async def get_channel(self, name: str) -> ChannelView | None:
        rows = await self._read(views.select_channel(name))
        return views.channel_views(rows)[0] if rows else None

    async def list_channels(self) -> list[ChannelView]:
        return views.channel_views(await self._read(views.select_channels()))

    # ---------------------------------------------------------------- units

    def _lock_for(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

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
        lock = self._lock_for(channel)
        names = (client_id, request_id)
        queue = self._queued.setdefault(channel, [])
        queue.append(names)
        try:
            await lock.acquire()
        except asyncio.CancelledError:
            self._gave_up_waiting(channel, lock)
            raise
        finally:
            self._leave_queue(channel, names)
        handed_over: asyncio.Future[None] | None = None
        try:
            group = self._groups.pop(channel, None) or await self._take_prepared(channel)
            if group is None:
                # The probe looks up the tickets named by this unit and by every unit queued behind it, which
                # will likely carry the transaction on: each then knows whether its ticket exists.
                named = [names, *self._queued.get(channel, ())]
                clients = list({c for c, _ in named if c is not None})
                requests = list({r for _, r in named if r is not None})
                group = await self._start_group(channel, clients, requests)
            else:
                group.unit.carry_on()
            unit = group.unit
            before = unit.fingerprint()
            try:
                yield unit
            except BaseException as exc:
                if isinstance(exc, TurnqError) and unit.fingerprint() == before:
                    # Rejected by the rules, which change nothing first: the group goes on without this unit.
                    unit.events.clear()
                    unit.concluded = False
                    with contextlib.suppress(Exception):  # the others hear of a failed commit themselves
                        await self._end_turn_of(channel, group, wait=False)
                    raise
                await _complete(self._abandon(group, exc))
                if isinstance(exc, Exception) and is_unavailable(exc):
                    raise unavailable(exc) from exc
                raise
            group.close_unit(unit.fingerprint() != before)
            handed_over = await self._end_turn_of(channel, group)
        finally:
            if lock.locked():
                lock.release()
        if handed_over is not None:
            # The next unit of the channel carries the transaction on; the last one commits for all.
            await handed_over

    async def _start_group(self, channel: str, clients: list[str], requests: list[str]) -> Group:
        """A transaction with the channel's row locked and probed: on a parked connection if there is one (its
        transaction already begun), else on one from the pool."""
        spare = self._spares.take()
        for held in (spare, None):
            fresh = held is None
            if held is None:
                held = await self._begin()
            try:
                unit = await self._lock_and_probe(held[1], channel, clients, requests)
            except BaseException as exc:
                await _complete(self._rollback(held))
                await self._release(held)
                if not fresh and isinstance(exc, Exception) and is_connection_lost(exc):
                    continue  # the parked connection had died: once more on a fresh one
                raise
            return Group(unit, self.origin, held)
        raise AssertionError("unreachable")

    async def _discard_spare(self, held: Held) -> None:
        await self._rollback(held)
        await self._release(held)

    def _leave_queue(self, channel: str, names: tuple[str | None, str | None]) -> None:
        queue = self._queued.get(channel)
        if queue is not None:
            queue.remove(names)
            if not queue:
                del self._queued[channel]

    async def _end_turn_of(
        self, channel: str, group: Group, *, wait: bool = True
    ) -> asyncio.Future[None] | None:
        """A unit of ``group`` is done: hand the open transaction to the next unit waiting for the channel, or
        commit the group. Returns the future to wait on when handed over (None once committed)."""
        if self._queued.get(channel) and not group.full:
            self._groups[channel] = group
            if not wait:
                return None
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            group.waiting.append(future)
            return future
        await _complete(self._commit(group))
        return None

    def _gave_up_waiting(self, channel: str, lock: asyncio.Lock) -> None:
        """A unit stopped waiting for the channel. If an open group was handed over to the queue it was in and
        nobody is left to carry it on, commit it from a task of its own."""
        if channel in self._groups and len(self._queued.get(channel, ())) <= 1:
            task = asyncio.ensure_future(self._commit_orphan(channel, lock))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def _commit_orphan(self, channel: str, lock: asyncio.Lock) -> None:
        async with lock:
            group = self._groups.pop(channel, None)
            if group is not None:
                with contextlib.suppress(Exception):
                    await self._commit(group)

    async def _begin(self) -> Held:
        """A connection with a transaction begun. One that turns out dead at its first statement (the server
        restarted and asyncpg has not noticed yet) is replaced once."""
        for attempt in (1, 2):
            held = await self._acquire()
            try:
                await held[1].execute("BEGIN")
            except Exception as exc:
                await self._release(held)
                if attempt == 1 and is_connection_lost(exc):
                    continue
                if is_unavailable(exc):
                    raise unavailable(exc) from exc
                raise
            return held
        raise AssertionError("unreachable")

    async def _acquire(self) -> Held:
        try:
            sa_conn = await self._open_engine().connect()
            conn = (await sa_conn.get_raw_connection()).driver_connection
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        assert isinstance(conn, asyncpg.Connection)
        return sa_conn, conn

    async def _release(self, held: Held) -> None:
        """Back to the pool; a connection that is closed, or still in a transaction after a failure, is
        discarded instead."""
        sa_conn, conn = held
        with contextlib.suppress(Exception):
            if conn.is_closed() or conn.is_in_transaction():
                await sa_conn.invalidate()
            await sa_conn.close()

    async def _lock_and_probe(
        self, conn: asyncpg.Connection, channel: str, clients: list[str], requests: list[str]
    ) -> PostgresUnit:
        try:
            rows = await conn.fetch(q.LOCK_AND_PROBE, channel, clients, requests)
            if not rows:
                raise TurnqError(ErrorCode.CHANNEL_NOT_FOUND, f"channel {channel!r} does not exist")
            row = channel_from_row(rows[0])
            if rows[0][N_CHANNEL]:
                probe = probe_rows(rows, N_CHANNEL + 1)
            else:
                probe = probe_rows(await conn.fetch(q.PROBE, row.id, clients, requests), 0)
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        return PostgresUnit(conn, row, probe, clients, requests)

    async def _rollback(self, held: Held) -> None:
        sa_conn, conn = held
        try:
            if not conn.is_closed():
                await conn.execute("ROLLBACK")
                return
        except Exception:
            log.debug("rollback failed; the connection is discarded", exc_info=True)
        with contextlib.suppress(Exception):
            await sa_conn.invalidate()

    async def _commit(self, group: Group) -> None:
        """Commit every unit of the group in one script, then deliver their batches in order and answer their
        callers; on failure, every caller gets the error."""
        held = group.held
        unit = group.unit
        feed = self._require_feed()
        versions = [v for v, _ in group.batches if v is not None]
        if versions:
            feed.committing(unit.row.id, versions[0])
        # Ending with BEGIN keeps the connection for the next group: on a busy channel, that group is started at
        # once (see _prepare_next); otherwise the connection is parked for any channel (see .spares).
        channel = unit.row.spec.name
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Busy here, and left alone by other servers lately: holding its row ahead would make them wait.
        busy = (
            not unit.deleted
            and now - self._last_commit.get(channel, -1.0) < BUSY_S
            and now - self._shared_at.get(channel, -SHARED_S) >= SHARED_S
            and len(self._prepared) < self._spares.limit  # never more connections held ahead than parked
        )
        park = not busy and self._spares.wanted()
        then = ";\nBEGIN" if busy or park else ""
        try:
            try:
                if not (unit.changed or group.payloads):
                    await held[1].execute("ROLLBACK" + then)  # nothing written: no commit record to flush
                else:
                    try:
                        await held[1].execute(
                            q.commit_script(unit, self.options.notify_channel, group.payloads) + then
                        )
                    except Exception as exc:
                        if is_connection_lost(exc):
                            for version in versions:
                                feed.ambiguous(unit.row.id, version)
                        raise
            except Exception as exc:
                feed.committed(unit.row.id)
                await self._rollback(held)
                error = unavailable(exc) if is_unavailable(exc) else exc
                group.answer(error)
                if error is exc:
                    raise
                raise error from exc
        except BaseException:
            await self._release(held)
            raise
        if unit.changed or group.payloads:
            self.unit_commits += 1
        if unit.deleted:
            self._last_commit.pop(channel, None)
        else:
            self._last_commit[channel] = loop.time()
        if busy:
            self._prepare_next(channel, held)
        elif park:
            self._spares.park(held)
        else:
            await self._release(held)
        for position, batch in group.batches:
            feed.local(unit.row.id, position, batch)
        feed.committed(unit.row.id)
        group.answer(None)

    def _note_other_servers(self, batch: EventBatch) -> None:
        if batch.origin and batch.origin != self.origin:
            if batch.deleted:
                self._shared_at.pop(batch.channel, None)
            else:
                self._shared_at[batch.channel] = asyncio.get_running_loop().time()

    def _prepare_next(self, channel: str, held: Held) -> None:
        """Start the channel's next group now, on the connection that just committed (its transaction begun):
        on a busy channel the next unit is usually on its way, and finds the row locked and probed instead of
        waiting for that round trip. Unclaimed after READY_S, it is rolled back, freeing the row."""
        task = asyncio.ensure_future(self._prepared_group(channel, held))
        timer = asyncio.get_running_loop().call_later(READY_S, self._drop_prepared, channel, task)
        self._prepared[channel] = (task, timer)

    async def _prepared_group(self, channel: str, held: Held) -> Group | None:
        try:
            unit = await self._lock_and_probe(held[1], channel, [], [])
        except Exception:
            await self._discard_spare(held)
            return None  # the unit that comes starts its own group and meets the error itself, if it persists
        return Group(unit, self.origin, held)

    async def _take_prepared(self, channel: str) -> Group | None:
        prepared = self._prepared.pop(channel, None)
        if prepared is None:
            return None
        task, timer = prepared
        timer.cancel()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._drop_prepared(channel, task, claimed=True)  # its row lock must not outlive this
            raise

    def _drop_prepared(
        self, channel: str, task: asyncio.Task[Group | None], *, claimed: bool = False
    ) -> None:
        prepared = self._prepared.get(channel)
        if claimed or (prepared is not None and prepared[0] is task):
            if not claimed:
                del self._prepared[channel]
            dropping = asyncio.ensure_future(self._discard_prepared(task))
            self._orphans.add(dropping)
            dropping.add_done_callback(self._orphans.discard)

    async def _discard_prepared(self, task: asyncio.Task[Group | None]) -> None:
        group = await task
        if group is not None:
            await self._discard_spare(group.held)

    async def _abandon(self, group: Group, exc: BaseException) -> None:
        """A unit failed after changing the group's state: nothing of the group may be committed."""
        held = group.held
        try:
            await self._rollback(held)
        finally:
            await self._release(held)
        error = unavailable(exc) if isinstance(exc, Exception) and is_unavailable(exc) else None
        group.answer(
            error
            or TurnqError(
                ErrorCode.BACKEND_UNAVAILABLE,
                "the transaction this request shared with others on the channel was rolled back; retry",
            )
        )

    def _require_feed(self) -> Feed:
        if self._feed is None:
            raise TurnqError(ErrorCode.BACKEND_UNAVAILABLE, "the PostgreSQL backend is not open")
        return self._feed

    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # ---------------------------------------------------------------- whole-store operations

    async def deadlines(self) -> dict[str, int]:
        return views.deadlines_from_rows(await self._read(views.select_deadlines()))

    async def restart_grace(self, now: int, min_window_ms: int) -> None:
        """Every ticket detached with a fresh grace, in one transaction; every process hears each touched
        channel's new nearest deadline."""
        await self._detach(sa.true(), now, min_window_ms)

    async def heartbeat(self, instance: str, now: int) -> bool:
        async with self._sa_connection() as conn, conn.begin():
            return await presence.heartbeat(conn, instance, now)

    async def detach_stale(
        self, now: int, stale_before: int, min_window_ms: int, *, refresh_detached: bool = False
    ) -> None:
        """The tickets of server processes silent since ``stale_before`` (and, with ``refresh_detached``,
        those attached to nobody) are detached with a fresh grace. Cheap when nobody went silent: every server
        runs this every second."""
        async with self._sa_connection() as conn, conn.begin():
            gone = await presence.forget_stale(conn, stale_before)
            which: sa.ColumnElement[bool] = presence.attached_to(gone) if gone else sa.false()
            if refresh_detached:
                which = sa.or_(which, tickets.c.attachment.is_(None))
            if not (gone or refresh_detached):
                return
            envelopes = await self._detach_in(conn, which, now, min_window_ms)
        self._deliver(envelopes)

    async def retire(self, instance: str, now: int, min_window_ms: int) -> None:
        async with self._sa_connection() as conn, conn.begin():
            await presence.forget(conn, instance)
            envelopes = await self._detach_in(conn, presence.attached_to([instance]), now, min_window_ms)
        self._deliver(envelopes)

    async def _detach(self, which: sa.ColumnElement[bool], now: int, min_window_ms: int) -> None:
        async with self._sa_connection() as conn, conn.begin():
            envelopes = await self._detach_in(conn, which, now, min_window_ms)
        self._deliver(envelopes)

    async def _detach_in(
        self, conn: AsyncConnection, which: sa.ColumnElement[bool], now: int, min_window_ms: int
    ) -> list[Envelope]:
        """Detach, then NOTIFY each touched channel's new depth and nearest deadline (inside the transaction,
        so other processes hear it only if it commits)."""
        bumped = await presence.detach(conn, which, now, min_window_ms)
        if not bumped:
            return []
        rows = (await conn.execute(views.select_deadlines([r[0] for r in bumped]))).all()
        deadlines = views.deadlines_from_rows(rows)
        envelopes = [
            Envelope(self.origin, cid, version, EventBatch(name, (), deadlines.get(name), depth, self.origin))
            for cid, name, version, depth in bumped
        ]
        payloads = [p for env in envelopes for p in encode(env)]
        await conn.execute(
            sa.text("SELECT count(pg_notify(:channel, p)) FROM unnest(CAST(:payloads AS text[])) AS p"),
            {"channel": self.options.notify_channel, "payloads": payloads},
        )
        return envelopes

    def _deliver(self, envelopes: list[Envelope]) -> None:
        feed = self._require_feed()
        for env in envelopes:
            feed.local(env.channel_id, env.version, env.batch)

    async def _resync(self) -> None:
        """After the listener reconnects, batches sent while it was away are lost: tell this process's
        listeners, for every channel, its current depth and nearest deadline (so reapers re-arm their timers)
        with ``resync`` set (so streams are brought up to date)."""
        try:
            async with self._sa_connection() as conn:
                deadlines = views.deadlines_from_rows((await conn.execute(views.select_deadlines())).all())
                counts = (await conn.execute(sa.select(channels.c.name, channels.c.ticket_count))).all()
        except TurnqError:
            return  # gone again; the next reconnect tries again
        for row in counts:
            name = str(row[0])
            self._listeners.publish(EventBatch(name, (), deadlines.get(name), int(row[1]), resync=True))


async def _complete(work: Coroutine[Any, Any, T]) -> T:
    """Finish a commit or rollback even if the caller is cancelled meanwhile: the connection must not go back to
    the pool mid-statement, and a committed unit's events must still be published. The cancellation is honoured
    afterwards."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
