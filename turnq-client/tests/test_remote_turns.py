"""Turns against a real ``turnq serve``: renewal, loss, resumed streams, failover, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from turnq.client import (
    AsyncTurnqClient,
    ErrorCode,
    Event,
    ServerUnavailableError,
    TurnLostError,
    TurnqClient,
    TurnqError,
    WaitTimeoutError,
)
from turnq.client.testing import API_KEY, ServerProcess, TcpProxy, free_port, wait_until


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TurnqClient]:
    with TurnqClient(server.url, API_KEY, timeout=5) as c:
        yield c


class Observer:
    """Collects a channel's observer events on a thread, for asserting what the server saw."""

    def __init__(self, url: str, channel: str) -> None:
        self.events: list[Event] = []
        self._client = TurnqClient(url, API_KEY, stream_read_timeout=30)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(channel,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self, channel: str) -> None:
        try:
            with self._client.observe(channel) as events:
                self._ready.set()
                for event in events:
                    self.events.append(event)
        except (TurnqError, RuntimeError):
            self._ready.set()

    def named(self, name: str) -> list[dict[str, object]]:
        return [e.data for e in self.events if e.name == name]

    def close(self) -> None:
        self._client.close()


def test_every_protocol_action(client: TurnqClient, channel: str) -> None:
    assert client.health().ok
    created = client.create_channel(channel, lease_ms=5000, max_depth=10, grace_ms=2000)
    assert (created.name, created.lease_ms, created.max_depth, created.grace_ms) == (channel, 5000, 10, 2000)
    with pytest.raises(TurnqError) as exists:
        client.create_channel(channel)
    assert exists.value.code is ErrorCode.CHANNEL_EXISTS
    assert channel in [c.name for c in client.list_channels()]
    first = client.enqueue(channel, "c1")
    second = client.enqueue(channel, "c2")
    assert (first.position, second.position) == (0, 1)
    with pytest.raises(TurnqError) as again:
        client.enqueue(channel, "c1")
    assert again.value.code is ErrorCode.ALREADY_QUEUED
    with client.subscribe(channel, "c1", first.request_id) as events:
        event = next(iter(events))
    assert event.name == "your-turn" and isinstance(event.data["fencingToken"], int)
    assert client.renew(channel, "c1", first.request_id, 10_000) > time.time() * 1000 + 5000
    client.step(channel, "c1", "build", "start", request_id=first.request_id)
    client.step(channel, "c1", "build", "end", request_id=first.request_id, success=True)
    view = client.queue(channel)
    assert view.holder is not None and view.holder.client_id == "c1"
    assert [w.client_id for w in view.queue] == ["c2"] and view.queue[0].position == 1
    with pytest.raises(TurnqError) as busy:
        client.delete_channel(channel)
    assert busy.value.code is ErrorCode.CHANNEL_NOT_EMPTY
    client.release(channel, "c1", first.request_id, success=True)
    with pytest.raises(TurnqError) as late:
        client.release(channel, "c1", first.request_id)
    assert late.value.code is ErrorCode.NOT_YOUR_TURN
    client.force_release(channel)  # c2 held it
    with pytest.raises(TurnqError) as nobody:
        client.force_release(channel)
    assert nobody.value.code is ErrorCode.NO_HOLDER
    third = client.enqueue(channel, "c3")
    client.abort(channel, "c3", third.request_id)
    client.delete_channel(channel)
    with pytest.raises(TurnqError) as gone:
        client.get_channel(channel)
    assert gone.value.code is ErrorCode.CHANNEL_NOT_FOUND


def test_wrong_key_is_unauthorized(server: ServerProcess) -> None:
    with TurnqClient(server.url, "wrong") as bad, pytest.raises(TurnqError) as err:
        bad.list_channels()
    assert err.value.code is ErrorCode.UNAUTHORIZED


def test_turn_outlives_its_lease_by_renewing(client: TurnqClient, channel: str) -> None:
    client.create_channel(channel, lease_ms=300)
    with client.turn(channel) as turn:
        first_deadline = turn.lease_expires_at
        time.sleep(1.5)  # five leases
        assert not turn.lost
        with turn.step("still mine"):
            pass
    assert turn.lease_expires_at is not None and first_deadline is not None
    assert turn.lease_expires_at > first_deadline
    assert client.queue(channel).holder is None


def test_lease_expiry_without_renewal_is_reported_lost(client: TurnqClient, channel: str) -> None:
    client.create_channel(channel, lease_ms=200)
    seen: list[str | None] = []

    def hold() -> None:
        with client.turn(channel, renew=False) as turn:
            assert turn.wait_lost(5)
            seen.append(turn.lost_reason)

    with pytest.raises(TurnLostError) as lost:
        hold()
    assert seen == ["lease_expired"]
    assert lost.value.code is ErrorCode.LEASE_EXPIRED


def test_force_released_turn_is_lost_at_next_step_and_exit(server: ServerProcess, channel: str) -> None:
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel)
        observer = Observer(server.url, channel)

        def hold() -> None:
            with client.turn(channel) as turn:
                with turn.step("before"):
                    pass
                client.force_release(channel)
                assert turn.wait_lost(5)
                assert turn.lost and turn.lost_reason == "force_released"
                with pytest.raises(TurnLostError), turn.step("after"):
                    pytest.fail("a step must not start once the turn is lost")

        with pytest.raises(TurnLostError) as at_exit:
            hold()
        assert at_exit.value.reason == "force_released"
        wait_until(lambda: observer.named("turn-completed"))
        completed = observer.named("turn-completed")
        assert completed[0]["success"] is False and completed[0]["error"] == "ADMIN_FORCE_RELEASE"
        assert [e["step"] for e in observer.named("step-ended")] == ["before"]
        observer.close()


def test_body_exception_releases_with_failure_and_propagates(server: ServerProcess, channel: str) -> None:
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel)
        observer = Observer(server.url, channel)
        with pytest.raises(ValueError, match="boom"), client.turn(channel) as turn, turn.step("migrate"):
            raise ValueError("boom\nwith a second line")
        wait_until(lambda: observer.named("turn-completed"))
        done = observer.named("turn-completed")[0]
        assert done["success"] is False and done["error"] == "boom with a second line"
        ended = observer.named("step-ended")[0]
        assert ended["success"] is False and ended["step"] == "migrate"
        assert client.queue(channel).depth == 0
        observer.close()


def test_with_turn_callback_style(client: TurnqClient, channel: str) -> None:
    client.create_channel(channel)

    def work(ctx: object) -> int:
        from turnq.client import Turn

        assert isinstance(ctx, Turn)
        return ctx.with_step("fetch", lambda: 41) + 1

    assert client.with_turn(channel, work) == 42


def test_wait_timeout_aborts_the_ticket(client: TurnqClient, channel: str) -> None:
    client.create_channel(channel)
    with client.turn(channel):
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError), client.turn(channel, timeout=0.4):
            pytest.fail("must not get the turn")
        assert time.monotonic() - started < 5
        assert client.queue(channel).queue == []


async def test_cancelled_waiter_aborts_its_ticket(server: ServerProcess, channel: str) -> None:
    async with AsyncTurnqClient(server.url, API_KEY) as client:
        await client.create_channel(channel)
        async with client.turn(channel):
            positions: list[int] = []

            async def wait() -> None:
                async with client.turn(channel, on_position=positions.append):
                    pytest.fail("must not get the turn")

            task = asyncio.create_task(wait())
            async with asyncio.timeout(10):
                while not positions:  # noqa: ASYNC110 - the test watching from outside
                    await asyncio.sleep(0.02)
                assert positions == [1]
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert (await client.queue(channel)).queue == []


async def test_async_fifo_and_fencing_tokens_increase(server: ServerProcess, channel: str) -> None:
    async with AsyncTurnqClient(server.url, API_KEY) as client:
        await client.create_channel(channel)
        order: list[int] = []
        tokens: list[int] = []
        holder = client.turn(channel)
        await holder.__aenter__()

        async def take(i: int) -> None:
            async with client.turn(channel) as turn:
                order.append(i)
                assert turn.fencing_token is not None
                tokens.append(turn.fencing_token)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(take(i)))
            async with asyncio.timeout(5):
                while (await client.queue(channel)).depth < i + 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        await holder.__aexit__(None, None, None)
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert tokens == sorted(tokens) and len(set(tokens)) == 6


def test_dropped_stream_is_resumed_keeping_the_place(
    server: ServerProcess, proxy: TcpProxy, channel: str, client: TurnqClient
) -> None:
    client.create_channel(channel, grace_ms=3000)
    order: list[str] = []
    errors: list[BaseException] = []

    def take(name: str, url: str, positions: list[int]) -> None:
        try:
            with TurnqClient(url, API_KEY) as c, c.turn(channel, on_position=positions.append):
                order.append(name)
        except BaseException as exc:
            errors.append(exc)

    with client.turn(channel):
        b_positions: list[int] = []
        b = threading.Thread(target=take, args=("B", proxy.url, b_positions))
        b.start()
        wait_until(lambda: b_positions == [1])
        c = threading.Thread(target=take, args=("C", server.url, []))
        c.start()
        wait_until(lambda: client.queue(channel).depth == 3)
        proxy.drop()  # B's stream is cut; B must resubscribe through the proxy within the grace
        time.sleep(1.0)
        assert len(client.queue(channel).queue) == 2, "B lost its place"
        wait_until(lambda: proxy.connections > 0)  # B is connected again
    b.join(15)
    c.join(15)
    assert not errors
    assert order == ["B", "C"]
    assert b_positions == [1, 0]


def test_refused_server_moves_to_the_next_url_and_resubscribes(
    server: ServerProcess, proxy: TcpProxy, channel: str, client: TurnqClient
) -> None:
    client.create_channel(channel, grace_ms=3000)
    dead = f"http://127.0.0.1:{free_port()}"
    result: list[int | None] = []
    errors: list[BaseException] = []

    def wait_behind() -> None:
        try:
            with TurnqClient([proxy.url, server.url], API_KEY) as c, c.turn(channel) as turn:
                result.append(turn.fencing_token)
        except BaseException as exc:
            errors.append(exc)

    # A refused first URL is skipped for plain calls.
    with TurnqClient([dead, server.url], API_KEY) as c:
        assert c.health().ok
        assert c.url == server.url
    with client.turn(channel):
        waiter = threading.Thread(target=wait_behind)
        waiter.start()
        wait_until(lambda: len(client.queue(channel).queue) == 1)
        proxy.close()  # the waiter's server goes away: its stream drops and reconnects are refused
        time.sleep(0.8)
        assert len(client.queue(channel).queue) == 1, "the waiter lost its place"
    waiter.join(15)
    assert not errors and result and result[0] is not None


def test_unreachable_everywhere_raises_server_unavailable() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with TurnqClient(urls, "k") as c, pytest.raises(ServerUnavailableError) as err:
        c.list_channels()
    assert err.value.code is ErrorCode.BACKEND_UNAVAILABLE


WAITER = """
import sys
from turnq.client import TurnqClient
with TurnqClient(sys.argv[1], sys.argv[2]) as client:
    try:
        with client.turn(sys.argv[3], on_position=lambda p: print("position", p, flush=True)):
            print("got the turn", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(42)
"""


def test_ctrl_c_on_a_blocking_waiter_gives_the_ticket_up(
    server: ServerProcess, channel: str, client: TurnqClient
) -> None:
    import signal
    import subprocess
    import sys

    client.create_channel(channel)
    with client.turn(channel):
        proc = subprocess.Popen(
            [sys.executable, "-c", WAITER, server.url, API_KEY, channel], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "position 1"
            assert len(client.queue(channel).queue) == 1
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 42
            assert proc.stdout.read().strip() == "interrupted"
        finally:
            if proc.poll() is None:
                proc.kill()
        assert client.queue(channel).queue == []


def test_server_restart_keeps_holder_and_waiter(tmp_path: Path, channel: str) -> None:
    """A durable server stops (telling streams ``server-shutdown``) and comes back on the same port: the holder
    keeps its turn by renewing once it is back, the waiter resubscribes and keeps its place."""
    db = f"sqlite:///{tmp_path / 'turnq.db'}"
    port = free_port()
    first = ServerProcess(port, database_url=db)
    errors: list[BaseException] = []
    order: list[str] = []
    try:
        with TurnqClient(first.url, API_KEY) as client:
            client.create_channel(channel, lease_ms=6000, grace_ms=5000)
        holder_client = TurnqClient(first.url, API_KEY)
        holder = holder_client.turn(channel, renew_interval=0.3)
        holder.__enter__()
        positions: list[int] = []

        def wait() -> None:
            try:
                with TurnqClient(first.url, API_KEY) as c, c.turn(channel, on_position=positions.append):
                    order.append("waiter")
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: positions == [1])
        first.stop()
        second = ServerProcess(port, database_url=db)
        try:
            time.sleep(1.0)  # long enough for both clients to be back
            assert not holder.lost
            with TurnqClient(second.url, API_KEY) as client:
                view = client.queue(channel)
                assert view.holder is not None and view.holder.client_id == holder.client_id
                assert len(view.queue) == 1
            order.append("holder")
            holder.__exit__(None, None, None)
            waiter.join(15)
            assert not errors and order == ["holder", "waiter"]
        finally:
            holder_client.close()
            second.stop()
    finally:
        first.stop()


class WriteLockHolder:
    """Another program holding the SQLite file's write lock: the server's commits fail with 503 meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.holding = threading.Event()
        self.let_go = threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        import sqlite3

        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        self.holding.set()
        self.let_go.wait(20)
        db.execute("ROLLBACK")
        db.close()

    def __enter__(self) -> WriteLockHolder:
        self.thread.start()
        assert self.holding.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.let_go.set()
        self.thread.join(10)


def test_enqueue_and_release_ride_out_a_briefly_unavailable_store(tmp_path: Path, channel: str) -> None:
    """While the store cannot commit, the server answers 503; the client's enqueue and release retry (bounded)
    and go through once it can, each applied once."""
    server = ServerProcess(database_url=f"sqlite:///{tmp_path / 'turnq.db'}?busy_timeout=100")
    try:
        with TurnqClient(server.url, API_KEY, timeout=5) as client:
            client.create_channel(channel)
            lock = WriteLockHolder(tmp_path / "turnq.db")
            with lock:
                threading.Timer(1.0, lock.let_go.set).start()
                started = time.monotonic()
                turn = client.turn(channel)
                turn.__enter__()  # its enqueue met 503s until the lock was let go
                assert time.monotonic() - started >= 0.9
            view = client.queue(channel)
            assert view.holder is not None and view.holder.client_id == turn.client_id and not view.queue
            lock = WriteLockHolder(tmp_path / "turnq.db")
            with lock:
                threading.Timer(1.0, lock.let_go.set).start()
                turn.__exit__(None, None, None)  # its release met 503s too
            assert client.queue(channel).holder is None
            with client.turn(channel) as again:  # the channel is free and works as before
                assert again.fencing_token > turn.fencing_token
    finally:
        server.stop()
    assert b"reloading from the file" in server.log.read_bytes()
