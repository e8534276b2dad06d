"""The backend contract suite: the same tests for every backend, ours and third parties'.

Subclass :class:`BackendContract` in a test module and override the ``make_backend`` fixture with a factory
that returns a new, unopened backend; for a durable backend every call must reach the same storage, so the
``reopen`` tests can close one backend and open another over the state it left::

    class TestMyBackend(BackendContract):
        durable = True

        @pytest.fixture
        def make_backend(self, tmp_path):
            return lambda: MyBackend(f"my://{tmp_path}/db")

The tests drive the backend through :class:`~turnq.core.service.TurnService` with a manual clock, so they
check the rules as they come out of *this* backend: FIFO, one holder, positions, leases, grace, fencing tokens,
events after commit, and (durable) nothing lost across a reopen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ..errors import ErrorCode, TurnqError
from ..limits import SUBSCRIBE_WINDOW_MS
from ..model import ChannelSpec, EventBatch
from ..service import TurnService
from ..store import Backend

try:  # pytest-asyncio is what runs the async tests; a clear error beats a silent skip
    import pytest_asyncio
except ImportError as exc:  # pragma: no cover
    raise ImportError("the turnq backend contract suite needs pytest-asyncio") from exc

T0 = 1_700_000_000_000


class ManualClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class Recorder:
    """Collects every published batch; ``names(request_id)`` gives the events one stream would see."""

    def __init__(self) -> None:
        self.batches: list[EventBatch] = []

    def __call__(self, batch: EventBatch) -> None:
        self.batches.append(batch)

    def events(self, request_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [
            (e.name, e.data)
            for b in self.batches
            for e in b.events
            if e.name is not None and e.request_id == request_id
        ]

    def names(self, request_id: str | None = None) -> list[str]:
        return [name for name, _ in self.events(request_id)]

    def clear(self) -> None:
        self.batches.clear()


class Harness:
    """One opened backend, its service, clock and recorder; ``reopen()`` simulates a restart."""

    def __init__(self, make_backend: Callable[[], Backend]) -> None:
        self.make_backend = make_backend
        self.clock = ManualClock()
        self.recorder = Recorder()
        self.backend: Backend = make_backend()
        self.service = TurnService(self.backend, clock=self.clock)

    async def open(self) -> None:
        await self.backend.open()
        self.backend.add_listener(self.recorder)

    async def close(self) -> None:
        self.backend.remove_listener(self.recorder)
        await self.backend.close()

    async def reopen(self) -> None:
        await self.close()
        self.backend = self.make_backend()
        self.service = TurnService(self.backend, clock=self.clock)
        await self.open()

    async def channel(self, name: str = "ch", **settings: Any) -> str:
        await self.service.create_channel(ChannelSpec(name=name, **settings))
        return name

    async def line(self, channel: str) -> list[str]:
        view = await self.service.queue_view(channel)
        head = [view.holder.client_id] if view.holder else []
        return head + [t.client_id for t in view.waiters]


def _code(exc: pytest.ExceptionInfo[TurnqError]) -> ErrorCode:
    return exc.value.code


class BackendContract:
    """Every backend must pass these unchanged. Set ``durable = True`` to run the reopen tests too."""

    durable: bool = False

    @pytest.fixture
    def make_backend(self) -> Callable[[], Backend]:
        raise NotImplementedError("override the make_backend fixture in your BackendContract subclass")

    @pytest_asyncio.fixture
    async def h(self, make_backend: Callable[[], Backend]) -> AsyncIterator[Harness]:
        harness = Harness(make_backend)
        await harness.open()
        try:
            yield harness
        finally:
            await harness.close()

    # ------------------------------------------------------------- channels

    @pytest.mark.asyncio
    async def test_create_get_list_delete(self, h: Harness) -> None:
        await h.channel("a/b c", lease_ms=1234, max_depth=5, max_wait_ms=999, grace_ms=0)
        view = await h.service.get_channel("a/b c")
        assert (view.spec.lease_ms, view.spec.max_depth, view.spec.max_wait_ms, view.spec.grace_ms) == (
            1234,
            5,
            999,
            0,
        )
        assert view.depth == 0 and view.holder is None
        await h.channel("other")
        names = sorted(v.spec.name for v in await h.service.list_channels())
        assert names == ["a/b c", "other"]
        await h.service.delete_channel("a/b c")
        with pytest.raises(TurnqError) as exc:
            await h.service.get_channel("a/b c")
        assert _code(exc) is ErrorCode.CHANNEL_NOT_FOUND
        assert [v.spec.name for v in await h.service.list_channels()] == ["other"]

    @pytest.mark.asyncio
    async def test_duplicate_channel_is_refused(self, h: Harness) -> None:
        await h.channel("dup", lease_ms=100)
        with pytest.raises(TurnqError) as exc:
            await h.channel("dup", lease_ms=200)
        assert _code(exc) is ErrorCode.CHANNEL_EXISTS
        assert (await h.service.get_channel("dup")).spec.lease_ms == 100

    @pytest.mark.asyncio
    async def test_unknown_channel(self, h: Harness) -> None:
        with pytest.raises(TurnqError) as exc:
            await h.service.enqueue("nope", "c1")
        assert _code(exc) is ErrorCode.CHANNEL_NOT_FOUND

    @pytest.mark.asyncio
    async def test_delete_refused_while_anyone_holds_or_waits(self, h: Harness) -> None:
        ch = await h.channel()
        rid, _ = await h.service.enqueue(ch, "c1")
        with pytest.raises(TurnqError) as exc:
            await h.service.delete_channel(ch)
        assert _code(exc) is ErrorCode.CHANNEL_NOT_EMPTY
        await h.service.release(ch, "c1", rid)
        await h.service.delete_channel(ch)
        assert "channel-deleted" in h.recorder.names(None)

    # ------------------------------------------------------------- the line

    @pytest.mark.asyncio
    async def test_first_enqueue_is_granted_with_token_one(self, h: Harness) -> None:
        ch = await h.channel(lease_ms=10_000)
        rid, position = await h.service.enqueue(ch, "c1")
        assert position == 0
        view = await h.service.get_channel(ch)
        assert view.holder is not None
        assert (view.holder.client_id, view.holder.request_id) == ("c1", rid)
        assert view.holder.fencing_token == 1
        assert view.holder.lease_deadline == h.clock.now + 10_000
        assert "your-turn" in h.recorder.names(rid)
        assert "turn-started" in h.recorder.names(None)

    @pytest.mark.asyncio
    async def test_fifo_order_and_increasing_tokens(self, h: Harness) -> None:
        ch = await h.channel()
        rids = {}
        for i in range(12):
            rid, position = await h.service.enqueue(ch, f"c{i}")
            assert position == i
            rids[f"c{i}"] = rid
        assert await h.line(ch) == [f"c{i}" for i in range(12)]
        granted, tokens = [], []
        for _ in range(12):
            holder = (await h.service.get_channel(ch)).holder
            assert holder is not None
            granted.append(holder.client_id)
            tokens.append(holder.fencing_token)
            await h.service.release(ch, holder.client_id, holder.request_id)
        assert granted == [f"c{i}" for i in range(12)]
        assert tokens == sorted(set(tokens)) and len(tokens) == 12
        assert (await h.service.get_channel(ch)).holder is None

    @pytest.mark.asyncio
    async def test_concurrent_enqueues_get_distinct_positions(self, h: Harness) -> None:
        ch = await h.channel()
        results = await asyncio.gather(*(h.service.enqueue(ch, f"c{i}") for i in range(40)))
        positions = sorted(p for _, p in results)
        assert positions == list(range(40))
        by_position = sorted((p, f"c{i}") for i, (_, p) in enumerate(results))
        assert await h.line(ch) == [c for _, c in by_position]

    @pytest.mark.asyncio
    async def test_second_enqueue_by_same_client(self, h: Harness) -> None:
        ch = await h.channel()
        await h.service.enqueue(ch, "c1")
        with pytest.raises(TurnqError) as exc:
            await h.service.enqueue(ch, "c1")
        assert _code(exc) is ErrorCode.ALREADY_QUEUED
        assert (await h.service.get_channel(ch)).depth == 1

    @pytest.mark.asyncio
    async def test_max_depth(self, h: Harness) -> None:
        ch = await h.channel(max_depth=2)
        await h.service.enqueue(ch, "c1")
        await h.service.enqueue(ch, "c2")
        with pytest.raises(TurnqError) as exc:
            await h.service.enqueue(ch, "c3")
        assert _code(exc) is ErrorCode.MAX_DEPTH_EXCEEDED
        assert await h.line(ch) == ["c1", "c2"]

    @pytest.mark.asyncio
    async def test_release_by_non_holder_changes_nothing(self, h: Harness) -> None:
        ch = await h.channel()
        r1, _ = await h.service.enqueue(ch, "c1")
        r2, _ = await h.service.enqueue(ch, "c2")
        h.recorder.clear()
        for client, rid in (("c2", r2), ("c1", r2), ("c2", r1), ("zz", r1)):
            with pytest.raises(TurnqError) as exc:
                await h.service.release(ch, client, rid)
            assert _code(exc) is ErrorCode.NOT_YOUR_TURN
        assert h.recorder.batches == []
        assert await h.line(ch) == ["c1", "c2"]

    @pytest.mark.asyncio
    async def test_abort_waiter_moves_the_rest_up(self, h: Harness) -> None:
        ch = await h.channel()
        rids = [(await h.service.enqueue(ch, f"c{i}"))[0] for i in range(4)]
        h.recorder.clear()
        await h.service.abort(ch, "c1", rids[1])
        assert await h.line(ch) == ["c0", "c2", "c3"]
        assert h.recorder.events(rids[1])[-1] == (
            "timeout",
            {"channel": ch, "requestId": rids[1], "reason": "aborted"},
        )
        assert (
            "position-updated",
            {"channel": ch, "requestId": rids[2], "position": 1},
        ) in h.recorder.events(rids[2])
        # Only the next in line (position 1) is told at once: rids[3], now at 2, hears nothing, never a wrong value.
        assert h.recorder.events(rids[3]) == []
        assert "left" in h.recorder.names(None)
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.client_id == "c0"

    @pytest.mark.asyncio
    async def test_abort_holder_grants_next(self, h: Harness) -> None:
        ch = await h.channel()
        r0, _ = await h.service.enqueue(ch, "c0")
        r1, _ = await h.service.enqueue(ch, "c1")
        await h.service.abort(ch, "c0")
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.request_id == r1 and holder.fencing_token == 2
        completed = [d for n, d in h.recorder.events(None) if n == "turn-completed"]
        assert completed[-1]["success"] is False and completed[-1]["error"] == "ABORTED"
        assert h.recorder.names(r0)[-1] == "timeout"
        assert h.recorder.names(r1)[-1] == "your-turn"

    @pytest.mark.asyncio
    async def test_abort_with_stale_request_id(self, h: Harness) -> None:
        ch = await h.channel()
        old, _ = await h.service.enqueue(ch, "c0")
        await h.service.release(ch, "c0", old)
        await h.service.enqueue(ch, "c0")
        with pytest.raises(TurnqError) as exc:
            await h.service.abort(ch, "c0", old)
        assert _code(exc) is ErrorCode.REQUEST_NOT_FOUND
        assert await h.line(ch) == ["c0"]

    @pytest.mark.asyncio
    async def test_force_release(self, h: Harness) -> None:
        ch = await h.channel()
        with pytest.raises(TurnqError) as exc:
            await h.service.force_release(ch)
        assert _code(exc) is ErrorCode.NO_HOLDER
        r0, _ = await h.service.enqueue(ch, "c0")
        r1, _ = await h.service.enqueue(ch, "c1")
        await h.service.force_release(ch)
        assert h.recorder.events(r0)[-1][1]["reason"] == "force_released"
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.request_id == r1
        completed = [d for n, d in h.recorder.events(None) if n == "turn-completed"]
        assert completed[-1]["error"] == "ADMIN_FORCE_RELEASE"

    @pytest.mark.asyncio
    async def test_queue_view(self, h: Harness) -> None:
        ch = await h.channel()
        for i in range(3):
            await h.service.enqueue(ch, f"c{i}")
            h.clock.advance(10)
        view = await h.service.queue_view(ch)
        wire = view.to_wire(h.clock.now)
        assert wire["depth"] == 3 and wire["active"] is True
        assert wire["holder"]["clientId"] == "c0"
        assert [(q["clientId"], q["position"]) for q in wire["queue"]] == [("c1", 1), ("c2", 2)]
        assert wire["queue"][0]["waitingMs"] == 20

    # ------------------------------------------------------------- leases and deadlines

    @pytest.mark.asyncio
    async def test_lease_expiry_grants_next(self, h: Harness) -> None:
        ch = await h.channel(lease_ms=1000)
        r0, _ = await h.service.enqueue(ch, "c0")
        r1, _ = await h.service.enqueue(ch, "c1")
        assert h.recorder.batches[-1].next_deadline == h.clock.now + 1000
        h.clock.advance(999)
        await h.service.expire(ch)
        assert (await h.service.get_channel(ch)).holder.request_id == r0  # type: ignore[union-attr]
        h.clock.advance(1)
        await h.service.expire(ch)
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.request_id == r1
        assert h.recorder.events(r0)[-1] == (
            "timeout",
            {"channel": ch, "requestId": r0, "reason": "lease_expired"},
        )
        with pytest.raises(TurnqError) as exc:
            await h.service.release(ch, "c0", r0)
        assert _code(exc) is ErrorCode.NOT_YOUR_TURN

    @pytest.mark.asyncio
    async def test_late_release_reports_lease_expired_and_commits_the_expiry(self, h: Harness) -> None:
        ch = await h.channel(lease_ms=1000)
        r0, _ = await h.service.enqueue(ch, "c0")
        r1, _ = await h.service.enqueue(ch, "c1")
        h.clock.advance(1500)
        with pytest.raises(TurnqError) as exc:
            await h.service.release(ch, "c0", r0)
        assert _code(exc) is ErrorCode.LEASE_EXPIRED
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.request_id == r1

    @pytest.mark.asyncio
    async def test_renew_extends_the_lease(self, h: Harness) -> None:
        ch = await h.channel(lease_ms=1000)
        r0, _ = await h.service.enqueue(ch, "c0")
        h.clock.advance(800)
        deadline = await h.service.renew(ch, "c0", r0)
        assert deadline == h.clock.now + 1000
        assert h.recorder.batches[-1].next_deadline == deadline
        h.clock.advance(900)
        await h.service.expire(ch)
        assert (await h.service.get_channel(ch)).holder is not None
        deadline = await h.service.renew(ch, "c0", r0, lease_ms=5000)
        assert deadline == h.clock.now + 5000
        with pytest.raises(TurnqError) as exc:
            await h.service.renew(ch, "other", r0)
        assert _code(exc) is ErrorCode.NOT_YOUR_TURN

    @pytest.mark.asyncio
    async def test_max_wait(self, h: Harness) -> None:
        ch = await h.channel(max_wait_ms=500, lease_ms=60_000)
        await h.service.enqueue(ch, "c0")
        h.clock.advance(100)
        r1, _ = await h.service.enqueue(ch, "c1")
        h.clock.advance(100)
        r2, _ = await h.service.enqueue(ch, "c2")
        assert h.recorder.batches[-1].next_deadline == h.clock.now - 200 + 600
        h.clock.advance(400)  # c1 waited 500, c2 400
        await h.service.expire(ch)
        assert await h.line(ch) == ["c0", "c2"]
        assert h.recorder.events(r1)[-1][1]["reason"] == "max_wait_exceeded"
        assert h.recorder.events(r2)[-1] == (
            "position-updated",
            {"channel": ch, "requestId": r2, "position": 1},
        )
        h.clock.advance(100)
        await h.service.expire(ch)
        assert await h.line(ch) == ["c0"]

    @pytest.mark.asyncio
    async def test_holder_is_not_subject_to_max_wait(self, h: Harness) -> None:
        ch = await h.channel(max_wait_ms=500, lease_ms=60_000)
        r0, _ = await h.service.enqueue(ch, "c0")
        await h.service.attach(ch, "c0", r0, "s0")
        h.clock.advance(10_000)
        await h.service.expire(ch)
        assert await h.line(ch) == ["c0"]

    # ------------------------------------------------------------- presence and grace

    @pytest.mark.asyncio
    async def test_attach_sends_the_current_state(self, h: Harness) -> None:
        ch = await h.channel()
        r0, _ = await h.service.enqueue(ch, "c0")
        r1, _ = await h.service.enqueue(ch, "c1")
        h.recorder.clear()
        await h.service.attach(ch, "c1", r1, "s1")
        await h.service.attach(ch, "c0", r0, "s0")
        assert h.recorder.events(r1) == [("queued", {"channel": ch, "requestId": r1, "position": 1})]
        name, data = h.recorder.events(r0)[0]
        assert name == "your-turn" and data["fencingToken"] == 1
        with pytest.raises(TurnqError) as exc:
            await h.service.attach(ch, "c0", r1, "s2")
        assert _code(exc) is ErrorCode.REQUEST_NOT_FOUND

    @pytest.mark.asyncio
    async def test_unsubscribed_ticket_is_dropped_after_the_window(self, h: Harness) -> None:
        ch = await h.channel(grace_ms=1000)
        await h.service.enqueue(ch, "c0")
        r1, _ = await h.service.enqueue(ch, "c1")
        await h.service.attach(ch, "c1", r1, "s1")
        h.clock.advance(max(1000, SUBSCRIBE_WINDOW_MS))
        await h.service.expire(ch)
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.request_id == r1
        completed = [d for n, d in h.recorder.events(None) if n == "turn-completed"]
        assert completed[-1]["error"] == "CLIENT_DISCONNECTED"

    @pytest.mark.asyncio
    async def test_grace_keeps_the_place_and_then_drops(self, h: Harness) -> None:
        ch = await h.channel(grace_ms=1000)
        rids = []
        for i in range(3):
            rid, _ = await h.service.enqueue(ch, f"c{i}")
            await h.service.attach(ch, f"c{i}", rid, f"s{i}")
            rids.append(rid)
        await h.service.detach(ch, rids[1], "s1")
        h.clock.advance(900)
        await h.service.expire(ch)
        await h.service.attach(ch, "c1", rids[1], "s1b")
        h.clock.advance(10_000)
        await h.service.expire(ch)
        assert await h.line(ch) == ["c0", "c1", "c2"]
        await h.service.detach(ch, rids[1], "s1b")
        h.clock.advance(1000)
        await h.service.expire(ch)
        assert await h.line(ch) == ["c0", "c2"]
        assert h.recorder.events(rids[1])[-1][1]["reason"] == "disconnected"

    @pytest.mark.asyncio
    async def test_replaced_stream_closing_changes_nothing(self, h: Harness) -> None:
        ch = await h.channel(grace_ms=1000)
        await h.service.enqueue(ch, "c0")
        rid, _ = await h.service.enqueue(ch, "c1")
        await h.service.attach(ch, "c1", rid, "old")
        await h.service.attach(ch, "c1", rid, "new")
        await h.service.detach(ch, rid, "old")
        h.clock.advance(60_000)
        await h.service.expire(ch)
        assert "c1" in await h.line(ch)

    @pytest.mark.asyncio
    async def test_zero_grace_drops_on_disconnect(self, h: Harness) -> None:
        ch = await h.channel(grace_ms=0)
        r0, _ = await h.service.enqueue(ch, "c0")
        await h.service.attach(ch, "c0", r0, "s0")
        r1, _ = await h.service.enqueue(ch, "c1")
        await h.service.attach(ch, "c1", r1, "s1")
        await h.service.detach(ch, r0, "s0")
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.request_id == r1

    # ------------------------------------------------------------- events

    @pytest.mark.asyncio
    async def test_positions_are_true_after_removals(self, h: Harness) -> None:
        ch = await h.channel()
        rids = [(await h.service.enqueue(ch, f"c{i}"))[0] for i in range(9)]
        for rid in rids:
            await h.service.attach(ch, f"c{rids.index(rid)}", rid, rid)
        await h.service.abort(ch, "c3")
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None
        await h.service.release(ch, "c0", rids[0])
        line = await h.line(ch)
        for rid in rids:
            events = [d["position"] for n, d in h.recorder.events(rid) if n in ("queued", "position-updated")]
            client = f"c{rids.index(rid)}"
            if client in line and events:
                # never wrong: the last position told is at least the true one
                assert events[-1] >= line.index(client)
                assert events == sorted(events, reverse=True)

    @pytest.mark.asyncio
    async def test_batches_carry_depth_and_deadline(self, h: Harness) -> None:
        ch = await h.channel(lease_ms=1000)
        await h.service.enqueue(ch, "c0")
        await h.service.enqueue(ch, "c1")
        last = h.recorder.batches[-1]
        assert last.channel == ch and last.depth == 2
        assert last.next_deadline == h.clock.now + 1000

    # ------------------------------------------------------------- durability

    @pytest.mark.asyncio
    async def test_reopen_keeps_everything(self, h: Harness) -> None:
        if not self.durable:
            pytest.skip("not a durable backend")
        ch = await h.channel(lease_ms=60_000, max_wait_ms=600_000, grace_ms=2000)
        rids = [(await h.service.enqueue(ch, f"c{i}"))[0] for i in range(6)]
        await h.service.release(ch, "c0", rids[0])
        await h.service.abort(ch, "c3")
        before = await h.service.get_channel(ch)
        line_before = await h.line(ch)
        await h.reopen()
        after = await h.service.get_channel(ch)
        assert after.spec == before.spec
        assert after.holder == before.holder
        assert await h.line(ch) == line_before == ["c1", "c2", "c4", "c5"]
        await h.service.release(ch, "c1", rids[1])
        holder = (await h.service.get_channel(ch)).holder
        assert holder is not None and holder.client_id == "c2"
        assert before.holder is not None and holder.fencing_token > before.holder.fencing_token

    @pytest.mark.asyncio
    async def test_reopen_never_reuses_a_token(self, h: Harness) -> None:
        if not self.durable:
            pytest.skip("not a durable backend")
        ch = await h.channel()
        tokens = []
        for round_ in range(3):
            rid, _ = await h.service.enqueue(ch, f"c{round_}")
            holder = (await h.service.get_channel(ch)).holder
            assert holder is not None
            tokens.append(holder.fencing_token)
            await h.service.release(ch, f"c{round_}", rid)
            await h.reopen()
        assert tokens == [1, 2, 3]

    @pytest.mark.asyncio
    async def test_restart_grace_detaches_everyone(self, h: Harness) -> None:
        if not self.durable:
            pytest.skip("not a durable backend")
        ch = await h.channel(grace_ms=1000)
        r0, _ = await h.service.enqueue(ch, "c0")
        await h.service.attach(ch, "c0", r0, "s0")
        await h.reopen()
        await h.backend.restart_grace(h.clock.now, 3000)
        deadlines = await h.backend.deadlines()
        assert deadlines[ch] == h.clock.now + 3000
        h.clock.advance(3000)
        await h.service.expire(ch)
        assert await h.line(ch) == []
