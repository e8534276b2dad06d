"""The backend survives a PostgreSQL restart: while the server is down operations fail fast with
BACKEND_UNAVAILABLE; once it is back, pooled connections are replaced and the listener hears other processes
again, with nothing to do by hand. Restarts the machine's local cluster (``pg_ctlcluster``), so it runs only
when selected: ``uv run pytest -m pg_restart``. The cluster is left running whatever happens."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from turnq.backends.postgres import PostgresBackend
from turnq.core import ChannelSpec, ErrorCode, TurnqError, TurnService
from turnq.core.testing import Recorder

pytestmark = pytest.mark.pg_restart


def _versions() -> list[str]:
    return os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []


async def _cluster(action: str) -> None:
    versions = _versions()
    if len(versions) != 1:
        pytest.skip("needs exactly one local cluster under /etc/postgresql")
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", action
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0, f"pg_ctlcluster {action} failed"


async def _eventually(check: Callable[[], Awaitable[None]], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await check()
            return
        except (TurnqError, AssertionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_reconnects_after_the_server_restarts(pg_url: str) -> None:
    a, b = PostgresBackend(pg_url + "&connect_timeout=2&command_timeout=5"), PostgresBackend(pg_url)
    heard = Recorder()
    await a.open()
    await b.open()
    a.add_listener(heard)
    sa, sb = TurnService(a), TurnService(b)
    try:
        await sa.create_channel(ChannelSpec("r", lease_ms=600_000))
        await sa.enqueue("r", "before")
        before_gap = len(heard.batches)
        await _cluster("stop")
        try:
            started = time.monotonic()
            with pytest.raises(TurnqError) as exc:
                await sa.enqueue("r", "during")
            assert exc.value.code is ErrorCode.BACKEND_UNAVAILABLE
            assert time.monotonic() - started < 10
        finally:
            await _cluster("start")

        async def enqueue_after() -> None:
            assert (await sa.enqueue("r", "after"))[1] == 1

        await _eventually(enqueue_after, 30)

        async def b_is_heard() -> None:
            # the listener has re-LISTENed: b's changes reach a's listeners again
            await sb.enqueue("r", f"from-b-{time.monotonic_ns()}")
            await asyncio.sleep(0.3)
            assert any(n == "queued" for n in heard.names(None))

        async def resynced() -> None:
            # after the gap, this process's listeners are told to bring their streams up to date
            assert any(b.resync and b.channel == "r" for b in heard.batches[before_gap:])

        await _eventually(resynced, 30)
        heard.clear()
        await _eventually(b_is_heard, 30)
        assert [t.client_id for t in (await sa.queue_view("r")).waiters][:1] == ["after"]
    finally:
        await a.close()
        await b.close()


@pytest.fixture(autouse=True)
async def _leave_the_cluster_running() -> AsyncIterator[None]:
    yield
    if not await _is_up():
        await _cluster("start")


async def _is_up() -> bool:
    proc = await asyncio.create_subprocess_exec(
        "pg_isready", "-h", "127.0.0.1", "-t", "5", stdout=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30) == 0
