"""SQLite-specific behaviour: the URL, the entry point, pragmas, migrations, other processes, crashes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from turnq.backends.sql import SCHEMA_VERSION, SchemaVersionError, schema
from turnq.backends.sqlite import SqliteBackend, parse_sqlite_url
from turnq.backends.sqlite import statements as q
from turnq.core import ChannelSpec, ErrorCode, EventBatch, Ticket, TurnqError, TurnService, open_backend


def test_entry_point_loads_and_open_backend_returns_it(tmp_path: Path) -> None:
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="turnq")}
    assert eps["sqlite"].load().turnq_backend_schemes() == {"sqlite": SqliteBackend}
    backend = open_backend(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(backend, SqliteBackend) and backend.durable


@pytest.mark.parametrize(
    ("url", "path", "sync"),
    [
        ("sqlite:///turnq.db", "turnq.db", "normal"),
        ("sqlite:////var/lib/turnq/turnq.db", "/var/lib/turnq/turnq.db", "normal"),
        ("sqlite:///data/my%20q.db?synchronous=FULL", "data/my q.db", "full"),
        ("sqlite+aiosqlite:////tmp/t.db?synchronous=extra&busy_timeout=250", "/tmp/t.db", "extra"),
    ],
)
def test_url(url: str, path: str, sync: str) -> None:
    parsed = parse_sqlite_url(url)
    assert (parsed.path, parsed.synchronous) == (path, sync)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://", "names no database file"),
        ("sqlite://host/x.db", "host part"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///x.db?journal=wal", "unknown parameter"),
    ],
)
def test_bad_url(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sqlite_url(url)


@pytest.mark.parametrize(("query", "level"), [("", 1), ("?synchronous=full", 2)])
async def test_wal_and_synchronous_level(tmp_path: Path, query: str, level: int) -> None:
    backend = SqliteBackend(f"sqlite:///{tmp_path}/sub/dir/t.db{query}")
    await backend.open()  # creates the missing directories
    try:
        writer = backend._open_writer()
        assert await writer.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == level
        assert await writer.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    finally:
        await backend.close()


async def test_migrations_record_the_version_and_run_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    assert await SqliteBackend(url).upgrade() == (0, SCHEMA_VERSION)
    assert await SqliteBackend(url).upgrade() == (SCHEMA_VERSION, SCHEMA_VERSION)
    backend = SqliteBackend(url)
    await backend.open()
    assert backend.migrated == (SCHEMA_VERSION, SCHEMA_VERSION)
    await backend.close()
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("SELECT version, description FROM turnq_schema_version").fetchall() == [
            (1, "channels and tickets"),
            (2, "server instances"),
        ]


async def test_a_version_1_database_is_migrated_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with monkeypatch.context() as m:  # a turnq that knew only the first migration
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        m.setattr(schema, "SCHEMA_VERSION", 1)
        assert await SqliteBackend(url).upgrade() == (0, 1)
        backend = SqliteBackend(url)
        await backend.open()
        await TurnService(backend).create_channel(ChannelSpec("kept"))
        await backend.close()
    assert await SqliteBackend(url).upgrade() == (1, SCHEMA_VERSION)
    backend = SqliteBackend(url)
    await backend.open()
    assert (await TurnService(backend).get_channel("kept")).spec.name == "kept"
    await backend.close()
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("SELECT count(*) FROM turnq_instances").fetchone() == (0,)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    await SqliteBackend(url).upgrade()
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("INSERT INTO turnq_schema_version VALUES (99, 'from the future', 0)")
    backend = SqliteBackend(url)
    with pytest.raises(SchemaVersionError, match="schema version 99, newer than this turnq supports") as exc:
        await backend.open()
    assert exc.value.code is ErrorCode.BACKEND_UNAVAILABLE
    assert backend._writer is None  # nothing left open


def test_db_upgrade_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    cmd = [sys.executable, "-m", "turnq.core.cli", "db", "upgrade", "--database-url", url]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    assert f"upgraded from version 0 to {SCHEMA_VERSION}" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    assert f"schema version {SCHEMA_VERSION}, nothing to upgrade" in again.stdout


async def test_writes_and_the_load_use_keys(tmp_path: Path) -> None:
    """Every write a unit sends finds its row by key, and loading the store reads tickets in key order."""
    backend = SqliteBackend(f"sqlite:///{tmp_path}/t.db")
    await backend.open()
    try:
        statements = {
            "DELETE_TICKET": (1, 5),
            "UPDATE_CHANNEL": (0,) * 12,
            "DELETE_CHANNEL": (1,),
            "DELETE_CHANNEL_TICKETS": (1,),
            "ALL_TICKETS": (),
        }
        plans = {}
        for name, params in statements.items():
            sql = "EXPLAIN QUERY PLAN " + getattr(q, name)
            plans[name] = await backend._open_writer().run(
                lambda c, sql=sql, params=params: [r[3] for r in c.execute(sql, params)]
            )
        for name, plan in plans.items():
            if name == "ALL_TICKETS":
                assert not any("TEMP B-TREE" in step for step in plan), plan  # no sort: key order
                continue
            assert any("USING" in step and ("KEY" in step or "INDEX" in step) for step in plan), (name, plan)
    finally:
        await backend.close()


async def test_another_process_holding_the_write_lock_gives_backend_unavailable(tmp_path: Path) -> None:
    """A commit that cannot get the file's write lock fails with 503; the backend then reloads what the file
    holds (the failed enqueue is not there), tells its listeners to bring streams up to date, and its next
    heartbeat says every ticket was detached, so the server re-attaches its streams."""
    backend = SqliteBackend(f"sqlite:///{tmp_path}/t.db?busy_timeout=200")
    await backend.open()
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    await service.enqueue("ch", "c0")
    batches: list[EventBatch] = []
    backend.add_listener(batches.append)
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(10)
        db.execute("ROLLBACK")
        db.close()

    thread = threading.Thread(target=hold_lock)
    thread.start()
    try:
        assert await asyncio.to_thread(holding.wait, 10)
        started = time.monotonic()
        with pytest.raises(TurnqError) as exc:
            await service.enqueue("ch", "c1")
        assert exc.value.code is ErrorCode.BACKEND_UNAVAILABLE
        assert time.monotonic() - started < 5
        assert not [b for b in batches if b.events]  # nothing announced for the failed commit
    finally:
        release.set()
        await asyncio.to_thread(thread.join, 10)
    assert (await service.enqueue("ch", "c2"))[1] == 1  # c1 is not in the line: the file never had it
    assert [t.client_id for t in (await service.queue_view("ch")).waiters] == ["c2"]
    assert any(b.resync and b.channel == "ch" for b in batches)
    assert await backend.heartbeat("me", 0) is False  # re-attach your streams
    assert await backend.heartbeat("me", 0) is True
    await backend.close()


async def test_one_server_per_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    first = SqliteBackend(url)
    await first.open()
    second = SqliteBackend(url)
    with pytest.raises(TurnqError) as exc:
        await second.open()
    assert exc.value.code is ErrorCode.BACKEND_UNAVAILABLE
    assert "in use by another turnq process" in exc.value.message and str(os.getpid()) in exc.value.message
    await first.close()
    await second.open()  # free once the first closed
    await second.close()


async def test_presence_stays_in_memory(tmp_path: Path) -> None:
    """Attaching writes nothing (a restart detaches every ticket anyway); the restart gives a fresh grace."""
    url = f"sqlite:///{tmp_path}/t.db"
    backend = SqliteBackend(url)
    await backend.open()
    service = TurnService(backend, clock=lambda: 1_000)
    await service.create_channel(ChannelSpec("ch", grace_ms=2_000, lease_ms=600_000))
    rid, _ = await service.enqueue("ch", "c0")
    db = sqlite3.connect(tmp_path / "t.db")
    before = db.execute("SELECT grace_deadline, attachment FROM turnq_tickets").fetchall()
    await service.attach("ch", "c0", rid, "stream-1")
    assert db.execute("SELECT grace_deadline, attachment FROM turnq_tickets").fetchall() == before
    db.close()
    await backend.close()
    backend = SqliteBackend(url)
    await backend.open()
    await backend.restart_grace(50_000, 5_000)
    assert await backend.deadlines() == {"ch": 55_000}
    await backend.close()


async def test_a_cancelled_unit_leaves_nothing_behind(tmp_path: Path) -> None:
    backend = SqliteBackend(f"sqlite:///{tmp_path}/t.db")
    await backend.open()
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    started = asyncio.Event()

    async def stuck() -> None:
        async with backend.unit("ch") as u:
            await u.push(Ticket("ghost", "r", u.next_seq(), 0))
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(stuck())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _rid, position = await service.enqueue("ch", "c1")
    assert position == 0
    assert [t.client_id for t in (await service.queue_view("ch")).waiters] == []
    assert (await service.get_channel("ch")).depth == 1
    await backend.close()


CRASHER = textwrap.dedent(
    """
    import asyncio, sys
    from turnq.core import ChannelSpec, TurnService
    from turnq.backends.sqlite import SqliteBackend

    async def main():
        backend = SqliteBackend(sys.argv[1])
        await backend.open()
        service = TurnService(backend)
        await service.create_channel(ChannelSpec("ch", lease_ms=600_000))
        for i in range(5):
            await service.enqueue("ch", f"c{i}")
        view = await service.get_channel("ch")
        await service.release("ch", "c0", view.holder.request_id)
        print("committed", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHER, url, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"committed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 30)
    backend = SqliteBackend(url)
    await backend.open()
    try:
        service = TurnService(backend)
        view = await service.get_channel("ch")
        assert view.depth == 4 and view.holder is not None
        assert (view.holder.client_id, view.holder.fencing_token) == ("c1", 2)
        line_view = await service.queue_view("ch")
        assert [t.client_id for t in line_view.waiters] == ["c2", "c3", "c4"]
    finally:
        await backend.close()


async def test_units_cancelled_anywhere_leave_the_writer_usable(tmp_path: Path) -> None:
    """Many concurrent units, some cancelled while waiting, starting or committing: afterwards every channel's
    line agrees with its depth, and the writer still serves (nothing stuck, no transaction left open)."""
    backend = SqliteBackend(f"sqlite:///{tmp_path}/t.db")
    await backend.open()
    service = TurnService(backend)
    for ch in range(4):
        await service.create_channel(ChannelSpec(f"ch{ch}"))
    tasks = [asyncio.create_task(service.enqueue(f"ch{i % 4}", f"c{i}")) for i in range(80)]
    for n, task in enumerate(tasks):
        if n % 3 == 0:
            await asyncio.sleep(0)
            task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert all(isinstance(r, tuple | asyncio.CancelledError) for r in results), results
    for ch in range(4):
        view = await asyncio.wait_for(service.queue_view(f"ch{ch}"), 10)
        line = ([view.holder.client_id] if view.holder else []) + [t.client_id for t in view.waiters]
        assert len(line) == (await service.get_channel(f"ch{ch}")).depth
    assert (await asyncio.wait_for(service.enqueue("ch0", "late"), 10))[0]
    await backend.close()


async def test_units_ending_together_share_a_commit(tmp_path: Path) -> None:
    backend = SqliteBackend(f"sqlite:///{tmp_path}/t.db")
    await backend.open()
    try:
        service = TurnService(backend)
        for ch in range(4):
            await service.create_channel(ChannelSpec(f"ch{ch}"))
        before = backend.unit_commits
        results = await asyncio.wait_for(
            asyncio.gather(*(service.enqueue(f"ch{i % 4}", f"c{i}") for i in range(40))), 30
        )
        assert sorted(p for _, p in results) == sorted(list(range(10)) * 4)
        assert 1 <= backend.unit_commits - before < 10  # 40 units, a handful of commits
    finally:
        await backend.close()
    reopened = SqliteBackend(f"sqlite:///{tmp_path}/t.db")
    await reopened.open()
    try:
        assert [(await reopened.get_channel(f"ch{ch}")).depth for ch in range(4)] == [10] * 4  # type: ignore[union-attr]
    finally:
        await reopened.close()
