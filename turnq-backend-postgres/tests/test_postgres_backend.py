"""PostgreSQL-specific behaviour: URLs, the entry point, migrations, several processes on one database, NOTIFY
payloads, lock waits, and an unreachable server."""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
import time
from collections.abc import Callable

import asyncpg
import pytest
from turnq.backends.postgres import PostgresBackend, parse_postgres_url
from turnq.backends.postgres.payload import MAX_PAYLOAD, Assembler, Envelope, encode
from turnq.backends.sql import SCHEMA_VERSION, SchemaVersionError
from turnq.core import (
    ChannelSpec,
    ErrorCode,
    Event,
    EventBatch,
    Ticket,
    TurnqError,
    TurnService,
    open_backend,
)
from turnq.core.testing import Recorder


class Heard(Recorder):
    """A recorder that can be waited on (bounded) until what it heard satisfies a check."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def __call__(self, batch: EventBatch) -> None:
        super().__call__(batch)
        self._changed.set()

    async def until(self, check: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not check():
                self._changed.clear()
                await self._changed.wait()


# ---------------------------------------------------------------- no database needed


def test_entry_point_loads() -> None:
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="turnq")}
    assert eps["postgresql"].load().turnq_backend_schemes() == {"postgresql": PostgresBackend}


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@h/db", "postgres://u@h/db", "postgresql+asyncpg://u@h/db", "POSTGRES://u@h/db"],
)
def test_open_backend_accepts_every_spelling(url: str) -> None:
    assert isinstance(open_backend(url), PostgresBackend)


def test_url_options_and_passthrough() -> None:
    o = parse_postgres_url(
        "postgres+asyncpg://me:pw@db.example:6543/q?schema=turnq_a&pool_size=3&max_overflow=0"
        "&connect_timeout=1.5&command_timeout=2&lock_timeout=100&sslmode=require"
    )
    assert o.dsn == "postgresql://me:pw@db.example:6543/q?sslmode=require"
    assert (
        o.schema,
        o.pool_size,
        o.max_overflow,
        o.connect_timeout,
        o.command_timeout,
        o.lock_timeout_ms,
    ) == (
        "turnq_a",
        3,
        0,
        1.5,
        2.0,
        100,
    )
    assert o.notify_channel == "turnq_events.turnq_a"
    assert parse_postgres_url("postgresql://h/db").notify_channel == "turnq_events"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://h/db", "not a postgresql URL"),
        ("postgresql://h/db?schema=Bad-Name", "schema"),
        ("postgresql://h/db?pool_size=0", "out of range"),
        ("postgresql://h/db?command_timeout=soon", "not a number"),
    ],
)
def test_bad_url(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_postgres_url(url)


def test_big_batches_are_split_and_joined() -> None:
    events = tuple(Event("step-ended", {"error": "é" * 3000, "i": i}, None) for i in range(5))
    batch = EventBatch("ch/☃", events, 123, 4, origin="o1", deleted=False)
    payloads = encode(Envelope("o1", 7, 42, batch))
    assert len(payloads) > 1 and all(len(p.encode()) <= MAX_PAYLOAD for p in payloads)
    assembler = Assembler()
    results = [assembler.feed(99, p) for p in payloads]
    assert results[:-1] == [None] * (len(payloads) - 1)
    env = results[-1]
    assert env is not None and (env.channel_id, env.version, env.batch) == (7, 42, batch)
    # a part whose beginning was missed is dropped, not misjoined
    assert Assembler().feed(99, payloads[1]) is None


async def test_unreachable_server_fails_fast_without_the_password() -> None:
    backend = PostgresBackend("postgresql://turnq:s3cret@127.0.0.1:9/db?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(TurnqError) as exc:
        await backend.open()
    assert exc.value.code is ErrorCode.BACKEND_UNAVAILABLE
    assert "s3cret" not in exc.value.message
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------- a real server


async def test_migrations_record_the_version_and_run_once(
    pg_url: str, postgres_dsn: str, schema: str
) -> None:
    assert await PostgresBackend(pg_url).upgrade() == (0, SCHEMA_VERSION)
    assert await PostgresBackend(pg_url).upgrade() == (SCHEMA_VERSION, SCHEMA_VERSION)
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        rows = await conn.fetch(f"SELECT version, description FROM {schema}.turnq_schema_version")
        assert [tuple(r) for r in rows] == [(1, "channels and tickets"), (2, "server instances")]
        await conn.execute(f"INSERT INTO {schema}.turnq_schema_version VALUES (99, 'from the future', 0)")
    finally:
        await conn.close()
    backend = PostgresBackend(pg_url)
    with pytest.raises(SchemaVersionError, match="schema version 99, newer than this turnq supports"):
        await backend.open()


async def test_two_processes_serialise_and_hear_each_other(pg_url: str) -> None:
    a, b = PostgresBackend(pg_url), PostgresBackend(pg_url)
    heard_a, heard_b = Heard(), Heard()
    await a.open()
    await b.open()
    a.add_listener(heard_a)
    b.add_listener(heard_b)
    try:
        sa, sb = TurnService(a), TurnService(b)
        await sa.create_channel(ChannelSpec("shared", lease_ms=60_000))
        results = await asyncio.gather(
            *(
                (sa if i % 2 else sb).enqueue("shared", f"c{i}")
                for i in range(30)  # interleaved on both backends, concurrently
            )
        )
        assert sorted(p for _, p in results) == list(range(30))
        order = [f"c{i}" for _, i in sorted((p, i) for i, (_, p) in enumerate(results))]
        # Release every turn from alternating processes; grants follow enqueue order exactly.
        granted = []
        for n in range(30):
            service = sa if n % 2 else sb
            holder = (await service.get_channel("shared")).holder
            assert holder is not None
            granted.append(holder.client_id)
            await service.release("shared", holder.client_id, holder.request_id)
        assert granted == order
        await heard_a.until(lambda: len(_tokens(heard_a)) >= 30)
        await heard_b.until(lambda: len(_tokens(heard_b)) >= 30)
        # each heard every grant, its own process's and the other's, in commit order
        assert _tokens(heard_a) == _tokens(heard_b) == list(range(1, 31))
        origins = {batch.origin for batch in heard_a.batches}
        assert origins == {a.origin, b.origin}
    finally:
        await a.close()
        await b.close()


def _tokens(recorder: Recorder) -> list[int]:
    return [d["fencingToken"] for n, d in recorder.events(None) if n == "turn-started"]


async def test_a_batch_too_big_for_one_notification_reaches_other_processes(pg_url: str) -> None:
    a, b = PostgresBackend(pg_url), PostgresBackend(pg_url)
    heard = Heard()
    await a.open()
    await b.open()
    b.add_listener(heard)
    try:
        service = TurnService(a)
        await service.create_channel(ChannelSpec("big"))
        rid, _ = await service.enqueue("big", "c1")
        error = "x" * 20_000
        await service.step("big", "c1", "compile", "end", rid, success=False, error=error)
        await heard.until(lambda: "step-ended" in heard.names(None))
        ended = [d for n, d in heard.events(None) if n == "step-ended"]
        assert ended and ended[0]["error"] == error
    finally:
        await a.close()
        await b.close()


async def test_restart_grace_tells_other_processes(pg_url: str) -> None:
    a, b = PostgresBackend(pg_url), PostgresBackend(pg_url)
    heard = Heard()
    await a.open()
    await b.open()
    b.add_listener(heard)
    try:
        service = TurnService(a)
        await service.create_channel(ChannelSpec("g", grace_ms=1000, lease_ms=600_000))
        rid, _ = await service.enqueue("g", "c1")
        await service.attach("g", "c1", rid, "s1")
        # b hears a's batches a moment later: wait for the attach's before listening for what comes next
        await heard.until(
            lambda: any(e.data.get("attachment") == "s1" for x in heard.batches for e in x.events)
        )
        heard.clear()
        now = service.clock()
        await a.restart_grace(now, 3000)
        assert (await a.deadlines())["g"] == now + 3000
        await heard.until(lambda: bool(heard.batches))
        assert [(x.channel, x.next_deadline, x.depth) for x in heard.batches] == [("g", now + 3000, 1)]
    finally:
        await a.close()
        await b.close()


async def test_a_lock_held_elsewhere_gives_backend_unavailable(
    pg_url: str, postgres_dsn: str, schema: str
) -> None:
    backend = PostgresBackend(pg_url + "&lock_timeout=200")
    await backend.open()
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("locked"))
    other = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await other.execute("BEGIN")
        await other.execute(f"SELECT 1 FROM {schema}.turnq_channels WHERE name = 'locked' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(TurnqError) as exc:
            await service.enqueue("locked", "c1")
        assert exc.value.code is ErrorCode.BACKEND_UNAVAILABLE
        assert time.monotonic() - started < 5
        await other.execute("ROLLBACK")
        assert (await service.enqueue("locked", "c1"))[1] == 0
    finally:
        await other.close()
        await backend.close()


async def test_a_cancelled_unit_leaves_nothing_behind(pg_url: str) -> None:
    backend = PostgresBackend(pg_url)
    await backend.open()
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    started = asyncio.Event()

    async def stuck() -> None:
        async with backend.unit("ch") as u:
            u.next_seq()
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(stuck())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await service.enqueue("ch", "c1"))[1] == 0  # the row lock was released
    await backend.close()


async def test_more_concurrent_units_than_connections_wait_their_turn(pg_url: str) -> None:
    backend = PostgresBackend(pg_url + "&pool_size=2&max_overflow=0&pool_timeout=20")
    await backend.open()
    try:
        service = TurnService(backend)
        for ch in range(10):
            await service.create_channel(ChannelSpec(f"ch{ch}"))
        results = await asyncio.wait_for(
            asyncio.gather(*(service.enqueue(f"ch{i % 10}", f"c{i}") for i in range(100))), 60
        )
        for ch in range(10):
            positions = sorted(p for i, (_, p) in enumerate(results) if i % 10 == ch)
            assert positions == list(range(10))
    finally:
        await backend.close()


def test_db_upgrade_command_hides_the_password(pg_url: str) -> None:
    url = pg_url.replace("://postgres@", "://postgres:hunter2@", 1)
    if "hunter2" not in url:
        pytest.skip("the test DSN has no user part to add a password to")
    cmd = [sys.executable, "-m", "turnq.core.cli", "db", "upgrade", "--database-url", url]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    assert f"upgraded from version 0 to {SCHEMA_VERSION}" in first.stdout
    assert "hunter2" not in first.stdout + first.stderr and "postgres:***@" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    assert "nothing to upgrade" in again.stdout


async def test_presence_detaches_only_the_tickets_of_silent_servers(pg_url: str) -> None:
    a, b = PostgresBackend(pg_url), PostgresBackend(pg_url)
    heard = Heard()
    await a.open()
    await b.open()
    b.add_listener(heard)
    try:
        service = TurnService(a)
        t0 = service.clock()
        assert await a.heartbeat("srv-a", t0) is False  # new
        assert await b.heartbeat("srv-b", t0) is False
        assert await a.heartbeat("srv-a", t0 + 10) is True
        await service.create_channel(ChannelSpec("p", grace_ms=1000, lease_ms=600_000))
        ra, _ = await service.enqueue("p", "on-a")
        rb, _ = await service.enqueue("p", "on-b")
        await service.enqueue("p", "nowhere")
        await service.attach("p", "on-a", ra, "srv-a/1")
        await service.attach("p", "on-b", rb, "srv-b/7")
        nowhere_grace = (await service.queue_view("p")).waiters[1].grace_deadline
        heard.clear()

        later = t0 + 20_000
        await b.heartbeat("srv-b", later)  # srv-a stays silent
        await b.detach_stale(later, later - 5_000, 3_000)
        view = await service.queue_view("p")
        tickets = {t.client_id: t for t in [*view.waiters, *(await _holder_ticket(a, "p"))]}
        assert (tickets["on-a"].attachment, tickets["on-a"].grace_deadline) == (None, later + 3_000)
        assert (tickets["on-b"].attachment, tickets["on-b"].grace_deadline) == ("srv-b/7", None)
        assert tickets["nowhere"].grace_deadline == nowhere_grace  # not refreshed without refresh_detached
        await heard.until(lambda: bool(heard.batches))  # every process hears the channel's new deadline
        assert heard.batches[-1].channel == "p" and heard.batches[-1].depth == 3
        assert await a.heartbeat("srv-a", later + 1) is False  # taken for dead: it must re-attach

        await b.detach_stale(later + 2, later - 5_000, 3_000, refresh_detached=True)
        view = await service.queue_view("p")
        assert view.waiters[1].grace_deadline == later + 2 + 3_000  # "nowhere" got a fresh grace
    finally:
        await a.close()
        await b.close()


async def _holder_ticket(backend: PostgresBackend, channel: str) -> list[Ticket]:
    async with backend.unit(channel) as u:
        holder = u.holder
        found = await u.find_by_request(holder.request_id) if holder else None
        return [found] if found else []
