"""Subscriber and observer streams: exact framing, the events of every transition, grace and resubscribe."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp_sse import EventSourceResponse
from server_kit import ADMIN_KEY, Server, make_config, running_server
from turnq.core import Event, EventBatch
from turnq.core.memory import MemoryBackend
from turnq.server.app import STATE_KEY
from turnq.server.hub import Hub, Stream
from turnq.server.routes import ObserverEventSource, TicketEventSource, _query
from turnq.server.state import ServerState


async def test_frames_are_exact_lf_lines(server: Server) -> None:
    ch = await server.create("frames")
    rid, _ = await server.enqueue(ch, "c1")
    sse = await server.subscribe(ch, "c1", rid)
    try:
        assert sse.response.headers["Content-Type"].startswith("text/event-stream")
        assert sse.response.headers["Cache-Control"] == "no-cache"
        assert sse.response.headers["X-Accel-Buffering"] == "no"
        data = await sse.expect("your-turn")
        assert set(data) == {"channel", "requestId", "leaseExpiresAt", "fencingToken"}
        assert sse.raw[0] == "event: your-turn\n"
        assert sse.raw[1].startswith("data: {")
        assert sse.raw[1].endswith("}\n")
        assert sse.raw[2] == "\n"
        assert await server.release(ch, "c1", rid) == 204
        assert await sse.ended()  # the server ends the stream when the ticket is over
    finally:
        sse.close()


def test_stream_responses_carry_aiohttp_sse_headers() -> None:
    """Our responses rebuild aiohttp_sse's headers under istr names; an aiohttp_sse that sets other headers must
    not be silently overridden."""
    expected = [(str(k), v) for k, v in EventSourceResponse().headers.items()]
    state, stream = ServerState(make_config(), MemoryBackend()), Stream("ch", None)
    for response in (ObserverEventSource(state, stream), TicketEventSource(state, stream)):
        assert [(str(k), v) for k, v in response.headers.items()] == expected


@pytest.mark.parametrize(
    "query",
    [
        "clientId=a+b&requestId=x%20y",
        "clientId=%C3%A9+%2B&requestId=%E2%82%AC",
        "clientId=%FF%FE&requestId=%zz%2",
        "clientId=&requestId",
        "clientId=1&clientId=2&&requestId=x=y;z",
        "apiKey=k%26ey&clientId=%2F%3F%23",
    ],
)
def test_query_is_read_as_aiohttp_reads_it(query: str) -> None:
    request = make_mocked_request("GET", f"/channels/c/subscribe?{query}")
    assert _query(request) == {name: request.query[name] for name in request.query}


async def test_waiter_hears_queued_position_and_turn(server: Server) -> None:
    ch = await server.create("wait")
    r1, _ = await server.enqueue(ch, "c1")
    r2, _ = await server.enqueue(ch, "c2")
    r3, _ = await server.enqueue(ch, "c3")
    sse = await server.subscribe(ch, "c3", r3)
    try:
        assert await sse.expect("queued") == {"channel": ch, "requestId": r3, "position": 2}
        await server.release(ch, "c1", r1)
        assert await sse.expect("position-updated") == {"channel": ch, "requestId": r3, "position": 1}
        await server.release(ch, "c2", r2)
        turn = await sse.expect("your-turn")
        assert turn["fencingToken"] == 3
        assert turn["leaseExpiresAt"] > time.time() * 1000
    finally:
        sse.close()


async def test_subscribe_errors(server: Server) -> None:
    ch = await server.create("suberr")
    rid, _ = await server.enqueue(ch, "c1")
    status, body = await server.call("GET", server.path(ch, "subscribe") + "?clientId=c1&requestId=nope")
    assert (status, body["code"]) == (404, "REQUEST_NOT_FOUND")
    status, body = await server.call("GET", server.path(ch, "subscribe") + f"?clientId=other&requestId={rid}")
    assert (status, body["code"]) == (404, "REQUEST_NOT_FOUND")
    status, body = await server.call(
        "GET", server.path("missing", "subscribe") + f"?clientId=c1&requestId={rid}"
    )
    assert (status, body["code"]) == (404, "CHANNEL_NOT_FOUND")
    status, body = await server.call("GET", server.path(ch, "subscribe") + "?clientId=c1")
    assert (status, body["code"]) == (400, "MALFORMED_REQUEST")
    assert "requestId" in body["message"]


async def test_streams_refuse_head(server: Server) -> None:
    """An event stream has no head: HEAD is refused before anything is registered or attached."""
    ch = await server.create("head")
    rid, _ = await server.enqueue(ch, "c1")
    for url in (f"{server.path(ch, 'subscribe')}?clientId=c1&requestId={rid}", server.path(ch, "observe")):
        status, _ = await server.call("HEAD", url)
        assert status == 405
    assert server.state.hub.counts() == (0, 0)
    sse = await server.subscribe(ch, "c1", rid)  # the ticket is unaffected
    try:
        await sse.expect("your-turn")
    finally:
        sse.close()


async def test_lease_expiry_through_the_reaper(server: Server) -> None:
    ch = await server.create("lease", leaseMs=300)
    r1, _ = await server.enqueue(ch, "c1")
    r2, _ = await server.enqueue(ch, "c2")
    s1 = await server.subscribe(ch, "c1", r1)
    s2 = await server.subscribe(ch, "c2", r2)
    obs = await server.observe(ch)
    try:
        first = await s1.expect("your-turn")
        started = time.monotonic()
        assert await s1.expect("timeout") == {"channel": ch, "requestId": r1, "reason": "lease_expired"}
        assert time.monotonic() - started < 2.0
        assert await s1.ended()
        second = await s2.expect("your-turn")
        assert second["fencingToken"] > first["fencingToken"]
        completed = await obs.expect("turn-completed")
        assert completed["success"] is False
        assert completed["error"] == "LEASE_EXPIRED"
        assert completed["clientId"] == "c1"
        assert await server.release(ch, "c1", r1) == 403
    finally:
        for s in (s1, s2, obs):
            s.close()


async def test_renew_keeps_the_turn_past_the_lease(server: Server) -> None:
    ch = await server.create("renew", leaseMs=300)
    rid, _ = await server.enqueue(ch, "c1")
    for _ in range(5):
        await asyncio.sleep(0.15)
        status, _ = await server.call("POST", server.path(ch, "renew"), {"clientId": "c1", "requestId": rid})
        assert status == 200
    assert (await server.queue(ch))["holder"]["requestId"] == rid
    assert await server.release(ch, "c1", rid) == 204


async def test_max_wait(server: Server) -> None:
    ch = await server.create("maxwait", maxWaitMs=300, leaseMs=60000)
    r1, _ = await server.enqueue(ch, "c1")
    r2, _ = await server.enqueue(ch, "c2")
    s1 = await server.subscribe(ch, "c1", r1)
    s2 = await server.subscribe(ch, "c2", r2)
    try:
        assert await s2.expect("timeout") == {"channel": ch, "requestId": r2, "reason": "max_wait_exceeded"}
        assert await s2.ended()
        assert (await server.queue(ch))["depth"] == 1
    finally:
        s1.close()
        s2.close()


async def test_observer_sees_the_line(server: Server) -> None:
    ch = await server.create("obs")
    obs = await server.observe(ch)
    try:
        r1, _ = await server.enqueue(ch, "c1")
        r2, _ = await server.enqueue(ch, "c2")
        await server.call("POST", server.path(ch, "abort"), {"clientId": "c2"})
        await server.release(ch, "c1", r1, result={"success": True})
        assert await obs.expect("queued") == {"channel": ch, "clientId": "c1", "requestId": r1, "position": 0}
        started = await obs.expect("turn-started")
        assert (started["clientId"], started["fencingToken"]) == ("c1", 1)
        assert (await obs.expect("queued"))["clientId"] == "c2"
        left = await obs.expect("left")
        assert (left["clientId"], left["reason"]) == ("c2", "aborted")
        done = await obs.expect("turn-completed")
        assert (done["clientId"], done["success"]) == ("c1", True)
        await server.call("DELETE", server.path(ch))
        assert await obs.expect("channel-deleted") == {"channel": ch}
        assert await obs.ended()
    finally:
        obs.close()
    assert r2


async def test_one_live_stream_per_ticket(server: Server) -> None:
    ch = await server.create("one", graceMs=200)
    await server.enqueue(ch, "c0")
    rid, _ = await server.enqueue(ch, "c1")
    first = await server.subscribe(ch, "c1", rid)
    await first.expect("queued")
    second = await server.subscribe(ch, "c1", rid)
    try:
        assert await second.expect("queued") == {"channel": ch, "requestId": rid, "position": 1}
        assert await first.ended()  # replaced
        await asyncio.sleep(0.5)  # past the grace: the replaced stream's closing changed nothing
        assert [q["clientId"] for q in (await server.queue(ch))["queue"]] == ["c1"]
    finally:
        first.close()
        second.close()


async def test_grace_keeps_the_place_after_a_dropped_connection(server: Server) -> None:
    ch = await server.create("grace", graceMs=1500)
    await server.enqueue(ch, "c0")
    rid, _ = await server.enqueue(ch, "c1")
    r2, _ = await server.enqueue(ch, "c2")
    sse = await server.subscribe(ch, "c1", rid)
    await sse.expect("queued")
    sse.response.connection.transport.abort()  # type: ignore[union-attr]  # drop the TCP connection
    sse.close()
    await asyncio.sleep(0.5)
    again = await server.subscribe(ch, "c1", rid)
    try:
        assert await again.expect("queued") == {"channel": ch, "requestId": rid, "position": 1}
        await asyncio.sleep(1.5)
        assert [q["clientId"] for q in (await server.queue(ch))["queue"]] == ["c1", "c2"]
    finally:
        again.close()
    assert r2


async def test_dropped_streams_are_forgotten(server: Server) -> None:
    """A stream whose client goes away leaves nothing behind in the hub, subscriber or observer."""
    ch = await server.create("forget", graceMs=60_000)
    await server.enqueue(ch, "c0")
    rid, _ = await server.enqueue(ch, "c1")
    sse = await server.subscribe(ch, "c1", rid)
    obs = await server.observe(ch)
    await sse.expect("queued")
    assert server.state.hub.counts() == (1, 1)
    for stream in (sse, obs):
        stream.response.connection.transport.abort()  # type: ignore[union-attr]
        stream.close()
    for _ in range(100):
        if server.state.hub.counts() == (0, 0):
            break
        await asyncio.sleep(0.02)
    assert server.state.hub.counts() == (0, 0)
    again = await server.subscribe(ch, "c1", rid)  # the grace kept the place
    try:
        assert await again.expect("queued") == {"channel": ch, "requestId": rid, "position": 1}
    finally:
        again.close()


async def test_absent_client_is_dropped_after_the_grace(server: Server) -> None:
    ch = await server.create("gone", graceMs=300)
    r0, _ = await server.enqueue(ch, "c0")
    holder = await server.subscribe(ch, "c0", r0)
    rid, _ = await server.enqueue(ch, "c1")
    r2, _ = await server.enqueue(ch, "c2")
    waiter = await server.subscribe(ch, "c2", r2)
    sse = await server.subscribe(ch, "c1", rid)
    obs = await server.observe(ch)
    try:
        await sse.expect("queued")
        await waiter.expect("queued")
        sse.response.connection.transport.abort()  # type: ignore[union-attr]
        sse.close()
        left = await obs.expect("left", timeout=5)
        assert (left["clientId"], left["reason"]) == ("c1", "disconnected")
        assert await waiter.expect("position-updated") == {"channel": ch, "requestId": r2, "position": 1}
        status, body = await server.call(
            "GET", server.path(ch, "subscribe") + f"?clientId=c1&requestId={rid}"
        )
        assert (status, body["code"]) == (404, "REQUEST_NOT_FOUND")
        # A holder that goes away loses its turn the same way.
        holder.response.connection.transport.abort()  # type: ignore[union-attr]
        holder.close()
        done = await obs.expect("turn-completed", timeout=5)
        assert (done["clientId"], done["error"]) == ("c0", "CLIENT_DISCONNECTED")
        assert (await waiter.expect("your-turn"))["fencingToken"] == 2
    finally:
        for s in (waiter, obs):
            s.close()


async def test_zero_grace_drops_at_once(server: Server) -> None:
    ch = await server.create("nograce", graceMs=0)
    r0, _ = await server.enqueue(ch, "c0")
    holder = await server.subscribe(ch, "c0", r0)
    r1, _ = await server.enqueue(ch, "c1")
    waiter = await server.subscribe(ch, "c1", r1)
    try:
        await holder.expect("your-turn")
        await waiter.expect("queued")
        holder.response.connection.transport.abort()  # type: ignore[union-attr]
        holder.close()
        assert (await waiter.expect("your-turn", timeout=2))["fencingToken"] == 2
    finally:
        waiter.close()


async def test_resubscribe_while_holding_repeats_the_real_deadline(server: Server) -> None:
    ch = await server.create("again", leaseMs=60000)
    rid, _ = await server.enqueue(ch, "c1")
    first = await server.subscribe(ch, "c1", rid)
    turn = await first.expect("your-turn")
    first.close()
    await asyncio.sleep(0.05)
    second = await server.subscribe(ch, "c1", rid)
    try:
        assert await second.expect("your-turn") == turn
    finally:
        second.close()


async def test_shutdown_tells_every_stream() -> None:
    runner = running_server(make_config())
    server = await runner.__aenter__()
    ch = await server.create("bye")
    rid, _ = await server.enqueue(ch, "c1")
    sse = await server.subscribe(ch, "c1", rid)
    obs = await server.observe(ch)
    await sse.expect("your-turn")
    session = aiohttp.ClientSession()
    try:
        cleanup = asyncio.create_task(runner.runner.cleanup())
        assert await sse.expect("server-shutdown") == {"reason": "server stopping"}
        assert await obs.expect("server-shutdown") == {"reason": "server stopping"}
        await asyncio.wait_for(cleanup, 10)
    finally:
        sse.close()
        obs.close()
        await session.close()
        await server.session.close()


async def test_api_key_in_query_for_subscribe(server: Server) -> None:
    ch = await server.create("q")
    rid, _ = await server.enqueue(ch, "c1")
    async with server.session.get(
        server.path(ch, "subscribe") + f"?clientId=c1&requestId={rid}&apiKey={ADMIN_KEY}"
    ) as resp:
        assert resp.status == 200
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert line == b"event: your-turn\n"


async def test_waiters_behind_the_next_hear_their_positions_from_the_refresh() -> None:
    """Only the next in line is told at once; the periodic refresh tells the others their true positions."""
    async with running_server(make_config(position_refresh_s=1.5)) as server:
        ch = await server.create("deep", leaseMs=60000)
        rids = [(await server.enqueue(ch, f"c{i}"))[0] for i in range(80)]
        deep = await server.subscribe(ch, "c75", rids[75])
        near = await server.subscribe(ch, "c2", rids[2])
        try:
            assert await deep.expect("queued") == {"channel": ch, "requestId": rids[75], "position": 75}
            assert await near.expect("queued") == {"channel": ch, "requestId": rids[2], "position": 2}
            await server.release(ch, "c0", rids[0])
            # 2 -> 1 is told at once (well before the refresh is due); 75 -> 74 waits for the refresh.
            assert await near.expect("position-updated", timeout=1.0) == {
                "channel": ch,
                "requestId": rids[2],
                "position": 1,
            }
            assert await deep.expect("position-updated", timeout=5) == {
                "channel": ch,
                "requestId": rids[75],
                "position": 74,
            }
        finally:
            deep.close()
            near.close()


async def test_a_line_that_only_grows_arms_no_position_refresh() -> None:
    """Positions change only when a ticket leaves; joining at the back and subscribing read nothing later."""
    async with running_server(make_config(position_refresh_s=0.3)) as server:
        refresher = server.app[STATE_KEY].positions
        ch = await server.create("growing", leaseMs=60000)
        rids = [(await server.enqueue(ch, f"c{i}"))[0] for i in range(3)]
        stream = await server.subscribe(ch, "c2", rids[2])
        try:
            assert await stream.expect("queued") == {"channel": ch, "requestId": rids[2], "position": 2}
            assert ch not in refresher._timers
            await server.release(ch, "c0", rids[0])
            assert ch in refresher._timers  # someone left: the line moved
        finally:
            stream.close()


def test_a_stream_hears_its_ticket_only_from_its_attach_on() -> None:
    """A grant committed between a stream's registration and its attach is not told twice: the attach says
    your-turn itself. Another stream's older attach does not take the new stream over; a later one does."""
    hub = Hub()
    stream = hub.open_ticket_stream("ch", "r1", "mine")
    turn = {"channel": "ch", "requestId": "r1", "leaseExpiresAt": 1, "fencingToken": 7}
    hub.on_batch(EventBatch("ch", (Event(None, {"attachment": "older"}, request_id="r1"),), None, 1))
    hub.on_batch(EventBatch("ch", (Event("your-turn", turn, request_id="r1"),), None, 1))  # the grant
    assert stream.take() is None and not stream.closing
    hub.on_batch(
        EventBatch(
            "ch",
            (Event(None, {"attachment": "mine"}, request_id="r1"), Event("your-turn", turn, request_id="r1")),
            None,
            1,
        )
    )
    assert (
        stream.take()
        == b'event: your-turn\ndata: {"channel":"ch","requestId":"r1","leaseExpiresAt":1,"fencingToken":7}\n\n'
    )
    hub.on_batch(EventBatch("ch", (Event(None, {"attachment": "later"}, request_id="r1"),), None, 1))
    assert stream.replaced and stream.closing
