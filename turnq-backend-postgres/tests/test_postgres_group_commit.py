"""Units of a busy channel sharing one transaction: they commit together, a rule rejection does not disturb the
others, a failing unit takes its group down with it (and nothing of it lasts), and a group handed to a caller
that gives up is still committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from turnq.backends.postgres import PostgresBackend, spares
from turnq.backends.postgres import backend as pg_backend
from turnq.core import ChannelSpec, ErrorCode, Ticket, TurnqError, TurnService


@pytest.fixture
async def backend(pg_url: str) -> AsyncIterator[PostgresBackend]:
    b = PostgresBackend(pg_url)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


class Stuck:
    """A unit on the channel that pushes a ticket and then waits to be let go, so units queue up behind it."""

    def __init__(self, backend: PostgresBackend, channel: str, client_id: str) -> None:
        self.backend, self.channel, self.client_id = backend, channel, client_id
        self.inside = asyncio.Event()
        self.go = asyncio.Event()

    async def run(self) -> None:
        async with self.backend.unit(self.channel) as u:
            await u.push(Ticket(self.client_id, f"r-{self.client_id}", u.next_seq(), 0))
            self.inside.set()
            await self.go.wait()


async def queued_behind(stuck: Stuck, *calls: Callable[[], Awaitable[object]]) -> list[asyncio.Task[object]]:
    """Start ``stuck``, then each call (queued on the channel in this order), then let ``stuck`` go."""
    holder = asyncio.create_task(stuck.run())
    await asyncio.wait_for(stuck.inside.wait(), 10)
    tasks: list[asyncio.Task[object]] = []
    for call in calls:
        tasks.append(asyncio.create_task(call()))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # each reaches the channel's queue before the next starts
    return [holder, *tasks]


async def stored(backend: PostgresBackend, channel: str) -> list[tuple[str, int]]:
    """(client_id, xmin) of the channel's stored tickets, read on a connection of its own."""
    conn = await asyncpg.connect(backend.options.dsn)
    try:
        await conn.execute(f"SET search_path = {backend.options.schema}")
        rows = await conn.fetch(
            "SELECT t.client_id, t.xmin::text::bigint AS x FROM turnq_tickets t "
            "JOIN turnq_channels c ON c.id = t.channel_id WHERE c.name = $1 ORDER BY t.seq",
            channel,
        )
        return [(r["client_id"], r["x"]) for r in rows]
    finally:
        await conn.close()


async def test_units_queued_on_a_channel_commit_in_one_transaction(backend: PostgresBackend) -> None:
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    stuck = Stuck(backend, "ch", "first")
    tasks = await queued_behind(stuck, *(lambda i=i: service.enqueue("ch", f"c{i}") for i in range(5)))
    stuck.go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert [pos for _, pos in results[1:]] == [1, 2, 3, 4, 5]  # type: ignore[misc]
    rows = await stored(backend, "ch")
    assert [c for c, _ in rows] == ["first", "c0", "c1", "c2", "c3", "c4"]
    assert len({x for _, x in rows}) == 1, rows  # one transaction wrote them all


async def test_every_caller_is_answered_only_after_the_commit(backend: PostgresBackend) -> None:
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    seen: dict[str, list[str]] = {}

    async def enqueue_and_look(i: int) -> None:
        await service.enqueue("ch", f"c{i}")
        seen[f"c{i}"] = [c for c, _ in await stored(backend, "ch")]

    await asyncio.wait_for(asyncio.gather(*(enqueue_and_look(i) for i in range(20))), 30)
    for client, visible in seen.items():
        assert client in visible  # another connection already saw it: committed before the answer


async def test_a_rejected_unit_leaves_its_group_going(backend: PostgresBackend) -> None:
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    stuck = Stuck(backend, "ch", "first")
    tasks = await queued_behind(
        stuck,
        lambda: service.enqueue("ch", "a"),
        lambda: service.release("ch", "nobody", "r-nobody"),  # NOT_YOUR_TURN, in the middle of the group
        lambda: service.enqueue("ch", "b"),
    )
    stuck.go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    assert isinstance(results[2], TurnqError) and results[2].code is ErrorCode.NOT_YOUR_TURN
    assert [r[1] for r in (results[1], results[3])] == [1, 2]  # type: ignore[index]
    assert [c for c, _ in await stored(backend, "ch")] == ["first", "a", "b"]


async def test_a_failing_unit_rolls_back_its_group_and_nothing_of_it_lasts(backend: PostgresBackend) -> None:
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))

    async def broken() -> None:
        async with backend.unit("ch") as u:
            await u.push(Ticket("ghost", "r-ghost", u.next_seq(), 0))
            raise RuntimeError("a bug in the middle of a unit")

    stuck = Stuck(backend, "ch", "first")
    tasks = await queued_behind(
        stuck,
        lambda: service.enqueue("ch", "a"),
        broken,
        lambda: service.enqueue("ch", "b"),
    )
    stuck.go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    for shared in (results[0], results[1]):  # ran in the failing unit's transaction
        assert isinstance(shared, TurnqError) and shared.code is ErrorCode.BACKEND_UNAVAILABLE, shared
    assert isinstance(results[2], RuntimeError)
    assert results[3] == (results[3][0], 0)  # type: ignore[index]  # a fresh transaction, on an empty line
    assert [c for c, _ in await stored(backend, "ch")] == ["b"]
    line = await service.queue_view("ch")
    assert line.holder is not None and line.holder.client_id == "b" and not line.waiters


async def test_a_group_handed_to_a_caller_that_gave_up_is_still_committed(backend: PostgresBackend) -> None:
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    stuck = Stuck(backend, "ch", "first")
    holder, late = await queued_behind(stuck, lambda: service.enqueue("ch", "late"))
    stuck.go.set()
    late.cancel()  # gives up just as the open transaction is handed to it
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(late, 10)
    await asyncio.wait_for(holder, 10)  # answered: its unit was committed by someone
    assert [c for c, _ in await stored(backend, "ch")] == ["first"]
    assert (await service.enqueue("ch", "next"))[1] == 1  # the channel is free


async def _state_of(backend: PostgresBackend, pid: int) -> str:
    conn = await asyncpg.connect(backend.options.dsn)
    try:
        return str(await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await conn.close()


async def test_a_committed_group_parks_its_connection_with_a_transaction_begun(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spares, "PARK_S", 0.3)
    monkeypatch.setattr(pg_backend, "BUSY_S", 0.0)  # no channel counts as busy: every commit parks
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    await service.enqueue("ch", "a")
    parked = [held[1].get_server_pid() for held, _ in backend._spares._parked]
    assert len(parked) == 1
    assert await _state_of(backend, parked[0]) == "idle in transaction"
    await service.enqueue("ch", "b")  # the next group starts on it (and parks it again)
    assert [held[1].get_server_pid() for held, _ in backend._spares._parked] == parked
    await asyncio.sleep(0.6)  # unused for PARK_S: rolled back and returned to the pool
    assert not backend._spares._parked
    if backend._spares._discarding:
        await asyncio.wait(set(backend._spares._discarding), timeout=10)
    assert await _state_of(backend, parked[0]) == "idle"
    assert [c for c, _ in await stored(backend, "ch")] == ["a", "b"]


async def _row_is_locked(backend: PostgresBackend, channel: str) -> bool:
    conn = await asyncpg.connect(backend.options.dsn)
    try:
        await conn.execute(f"SET search_path = {backend.options.schema}")
        async with conn.transaction():
            try:
                await conn.fetch("SELECT 1 FROM turnq_channels WHERE name = $1 FOR UPDATE NOWAIT", channel)
            except asyncpg.LockNotAvailableError:
                return True
        return False
    finally:
        await conn.close()


async def test_a_busy_channel_has_its_next_group_started_ahead(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_backend, "READY_S", 0.5)
    service = TurnService(backend)
    await service.create_channel(ChannelSpec("ch"))
    await service.enqueue("ch", "a")
    assert "ch" not in backend._prepared  # one commit: not busy yet
    await service.enqueue("ch", "b")
    assert "ch" in backend._prepared  # two in a row: the next group is started at once
    assert await _row_is_locked(backend, "ch")
    assert (await service.enqueue("ch", "c"))[1] == 2  # claims it
    assert [c for c, _ in await stored(backend, "ch")] == ["a", "b", "c"]
    await asyncio.sleep(0.8)  # unclaimed for READY_S: rolled back, the row free for everyone
    assert "ch" not in backend._prepared
    if backend._orphans:
        await asyncio.wait(set(backend._orphans), timeout=10)
    assert not await _row_is_locked(backend, "ch")
    assert (await service.enqueue("ch", "d"))[1] == 3


async def test_a_channel_shared_with_another_server_is_not_held_ahead(pg_url: str) -> None:
    """Holding a row ahead for this server's next unit would keep another server's units waiting."""
    a, b = PostgresBackend(pg_url), PostgresBackend(pg_url)
    await a.open()
    await b.open()
    try:
        sa, sb = TurnService(a), TurnService(b)
        heard_b = asyncio.Event()
        a.add_listener(lambda batch: heard_b.set() if batch.origin == b.origin else None)
        await sa.create_channel(ChannelSpec("ch"))
        await sa.enqueue("ch", "a1")
        await sa.enqueue("ch", "a2")
        assert "ch" in a._prepared  # busy, and nobody else around: held ahead
        started = asyncio.get_running_loop().time()
        await sb.enqueue("ch", "b1")  # waits for a's prepared group to be given up (a few ms)
        assert asyncio.get_running_loop().time() - started < 2
        await asyncio.wait_for(heard_b.wait(), 10)  # a hears b's commit
        assert "ch" in a._shared_at
        await sa.enqueue("ch", "a3")
        await sa.enqueue("ch", "a4")
        assert "ch" not in a._prepared  # shared now: not held ahead
        assert [c for c, _ in await stored(a, "ch")] == ["a1", "a2", "b1", "a3", "a4"]
    finally:
        await a.close()
        await b.close()
