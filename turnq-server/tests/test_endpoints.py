"""Every endpoint of the protocol over real HTTP, with the shapes and statuses the protocol promises."""

from __future__ import annotations

from server_kit import ADMIN_KEY, Server


async def test_health_needs_no_key(server: Server) -> None:
    status, body = await server.call("GET", f"{server.url}/health", key=None)
    assert status == 200
    assert body["ok"] is True
    assert body["channels"] == 0
    assert body["backend"] == "memory"
    assert body["uptime"] >= 0


async def test_channel_lifecycle(server: Server) -> None:
    status, body = await server.call(
        "POST", f"{server.url}/channels", {"name": "deploy/prod eu", "leaseMs": 60000, "maxDepth": 10}
    )
    assert status == 201
    assert body["name"] == "deploy/prod eu"
    assert body["leaseMs"] == 60000
    assert body["maxDepth"] == 10
    assert body["maxWaitMs"] is None
    assert body["graceMs"] == 5000
    status, body = await server.call("POST", f"{server.url}/channels", {"name": "deploy/prod eu"})
    assert (status, body["code"]) == (409, "CHANNEL_EXISTS")
    status, body = await server.call("GET", f"{server.url}/channels")
    assert status == 200
    assert [(c["name"], c["depth"], c["active"]) for c in body["channels"]] == [("deploy/prod eu", 0, False)]
    status, body = await server.call("GET", server.path("deploy/prod eu"))
    assert status == 200
    assert body["leaseMs"] == 60000
    status, _ = await server.call("DELETE", server.path("deploy/prod eu"))
    assert status == 204
    status, body = await server.call("GET", server.path("deploy/prod eu"))
    assert (status, body["code"]) == (404, "CHANNEL_NOT_FOUND")
    status, body = await server.call("DELETE", server.path("deploy/prod eu"))
    assert (status, body["code"]) == (404, "CHANNEL_NOT_FOUND")


async def test_delete_refused_while_busy(server: Server) -> None:
    ch = await server.create("busy")
    rid, _ = await server.enqueue(ch, "c1")
    status, body = await server.call("DELETE", server.path(ch))
    assert (status, body["code"]) == (409, "CHANNEL_NOT_EMPTY")
    assert await server.release(ch, "c1", rid) == 204
    status, _ = await server.call("DELETE", server.path(ch))
    assert status == 204


async def test_enqueue_release_queue_view(server: Server) -> None:
    ch = await server.create("q")
    r1, p1 = await server.enqueue(ch, "c1")
    r2, p2 = await server.enqueue(ch, "c2")
    r3, p3 = await server.enqueue(ch, "c3")
    assert (p1, p2, p3) == (0, 1, 2)
    view = await server.queue(ch)
    assert view["channel"] == ch
    assert view["depth"] == 3
    assert view["active"] is True
    assert view["holder"]["clientId"] == "c1"
    assert view["holder"]["fencingToken"] == 1
    assert [(q["clientId"], q["requestId"], q["position"]) for q in view["queue"]] == [
        ("c2", r2, 1),
        ("c3", r3, 2),
    ]
    assert all(q["waitingMs"] >= 0 and q["enqueuedAt"] > 0 for q in view["queue"])
    status, body = await server.call("POST", server.path(ch, "enqueue"), {"clientId": "c2"})
    assert (status, body["code"]) == (409, "ALREADY_QUEUED")
    assert await server.release(ch, "c2", r2) == 403
    assert await server.release(ch, "c1", r1, result={"success": False, "error": "boom"}) == 204
    view = await server.queue(ch)
    assert view["holder"]["clientId"] == "c2"
    assert view["holder"]["fencingToken"] == 2
    assert [q["position"] for q in view["queue"]] == [1]


async def test_max_depth(server: Server) -> None:
    ch = await server.create("small", maxDepth=1)
    await server.enqueue(ch, "c1")
    status, body = await server.call("POST", server.path(ch, "enqueue"), {"clientId": "c2"})
    assert (status, body["code"]) == (429, "MAX_DEPTH_EXCEEDED")


async def test_abort(server: Server) -> None:
    ch = await server.create("ab")
    r1, _ = await server.enqueue(ch, "c1")
    r2, _ = await server.enqueue(ch, "c2")
    await server.enqueue(ch, "c3")
    status, _ = await server.call("POST", server.path(ch, "abort"), {"clientId": "c2", "requestId": r2})
    assert status == 204
    assert [q["clientId"] for q in (await server.queue(ch))["queue"]] == ["c3"]
    status, body = await server.call("POST", server.path(ch, "abort"), {"clientId": "c2"})
    assert (status, body["code"]) == (404, "REQUEST_NOT_FOUND")
    status, _ = await server.call("POST", server.path(ch, "abort"), {"clientId": "c1"})
    assert status == 204
    view = await server.queue(ch)
    assert view["holder"]["clientId"] == "c3"
    assert r1 != view["holder"]["requestId"]


async def test_renew(server: Server) -> None:
    ch = await server.create("rn", leaseMs=2000)
    rid, _ = await server.enqueue(ch, "c1")
    before = (await server.queue(ch))["holder"]["leaseExpiresAt"]
    status, body = await server.call(
        "POST", server.path(ch, "renew"), {"clientId": "c1", "requestId": rid, "leaseMs": 60000}
    )
    assert status == 200
    assert body["leaseExpiresAt"] >= before + 50000
    assert (await server.queue(ch))["holder"]["leaseExpiresAt"] == body["leaseExpiresAt"]
    status, body = await server.call("POST", server.path(ch, "renew"), {"clientId": "c2", "requestId": rid})
    assert (status, body["code"]) == (403, "NOT_YOUR_TURN")
    status, body = await server.call(
        "POST", server.path(ch, "renew"), {"clientId": "c1", "requestId": "nope"}
    )
    assert (status, body["code"]) == (403, "NOT_YOUR_TURN")


async def test_steps_holder_only(server: Server) -> None:
    ch = await server.create("st")
    rid, _ = await server.enqueue(ch, "c1")
    await server.enqueue(ch, "c2")
    obs = await server.observe(ch)
    try:
        status, _ = await server.call(
            "POST",
            server.path(ch, "steps"),
            {"clientId": "c1", "requestId": rid, "step": "fetch", "event": "start"},
        )
        assert status == 204
        status, _ = await server.call(
            "POST",
            server.path(ch, "steps"),
            {"clientId": "c1", "step": "fetch", "event": "end", "success": False, "error": "net"},
        )
        assert status == 204
        status, body = await server.call(
            "POST", server.path(ch, "steps"), {"clientId": "c2", "step": "fetch", "event": "start"}
        )
        assert (status, body["code"]) == (403, "NOT_YOUR_TURN")
        status, body = await server.call(
            "POST",
            server.path(ch, "steps"),
            {"clientId": "c1", "requestId": "stale", "step": "x", "event": "start"},
        )
        assert (status, body["code"]) == (403, "NOT_YOUR_TURN")
        assert await obs.expect("step-started") == {"channel": ch, "clientId": "c1", "step": "fetch"}
        assert await obs.expect("step-ended") == {
            "channel": ch,
            "clientId": "c1",
            "step": "fetch",
            "success": False,
            "error": "net",
        }
    finally:
        obs.close()


async def test_force_release(server: Server) -> None:
    ch = await server.create("fr")
    status, body = await server.call("DELETE", server.path(ch, "holder"))
    assert (status, body["code"]) == (404, "NO_HOLDER")
    r1, _ = await server.enqueue(ch, "c1")
    await server.enqueue(ch, "c2")
    sse = await server.subscribe(ch, "c1", r1)
    try:
        await sse.expect("your-turn")
        status, _ = await server.call("DELETE", server.path(ch, "holder"))
        assert status == 204
        assert await sse.expect("timeout") == {"channel": ch, "requestId": r1, "reason": "force_released"}
        assert await sse.ended()
    finally:
        sse.close()
    assert (await server.queue(ch))["holder"]["clientId"] == "c2"
    assert await server.release(ch, "c1", r1) == 403


async def test_metrics_families(server: Server) -> None:
    ch = await server.create("m", leaseMs=100)
    rid, _ = await server.enqueue(ch, "c1")
    await server.release(ch, "c1", rid)
    await server.enqueue(ch, "c2")
    async with server.session.get(f"{server.url}/metrics", headers={"x-api-key": ADMIN_KEY}) as resp:
        assert resp.status == 200
        text = await resp.text()
    for family in (
        "turnq_requests_total",
        "turnq_active_channels",
        "turnq_queue_depth",
        "turnq_active_connections",
        "turnq_wait_duration_seconds",
        "turnq_hold_duration_seconds",
        "turnq_timeouts_total",
        "turnq_store_commits_total",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text, family
    assert "turnq_store_commits_total 0.0" in text  # the memory backend commits nothing
    assert 'turnq_queue_depth{channel="m"} 1.0' in text
    assert 'turnq_requests_total{method="POST",path="/channels/{name}/enqueue",status="200"} 2.0' in text
    status, _ = await server.call("GET", f"{server.url}/metrics", key=None)
    assert status == 401


async def test_deleted_channel_series_disappear(server: Server) -> None:
    ch = await server.create("gone")
    rid, _ = await server.enqueue(ch, "c1")
    await server.release(ch, "c1", rid)
    await server.call("DELETE", server.path(ch))
    async with server.session.get(f"{server.url}/metrics", headers={"x-api-key": ADMIN_KEY}) as resp:
        text = await resp.text()
    assert 'channel="gone"' not in text
