"""Bad input gets a clear 4xx naming the field, never a 500 or a hang, and never changes state."""

from __future__ import annotations

from typing import Any

import pytest
from server_kit import CLIENT_KEY, Server

LONG = "x" * 201

# (method, path under the channel "t" or absolute, body or raw bytes, status, code, words the message must contain)
CASES: list[tuple[str, str, Any, int, str, str]] = [
    ("POST", "/channels", b"{not json", 400, "MALFORMED_REQUEST", "JSON"),
    # JSON's own limits: no NaN or Infinity, UTF-8 only, no lone surrogates.
    ("POST", "enqueue", b'{"clientId": NaN}', 400, "MALFORMED_REQUEST", "JSON"),
    ("POST", "enqueue", b'{"clientId": "c", "x": 1e999}', 400, "MALFORMED_REQUEST", "JSON"),
    ("POST", "enqueue", b'{"clientId": "\xff"}', 400, "MALFORMED_REQUEST", "JSON"),
    ("POST", "enqueue", b'{"clientId": "\\ud800"}', 400, "MALFORMED_REQUEST", "JSON"),
    ("POST", "/channels", b"[1,2]", 400, "MALFORMED_REQUEST", "object"),
    ("POST", "/channels", {}, 400, "MALFORMED_REQUEST", "name"),
    ("POST", "/channels", {"name": ""}, 400, "MALFORMED_REQUEST", "name"),
    ("POST", "/channels", {"name": 5}, 400, "MALFORMED_REQUEST", "name"),
    ("POST", "/channels", {"name": LONG}, 400, "MALFORMED_REQUEST", "200"),
    ("POST", "/channels", {"name": "a\nb"}, 400, "MALFORMED_REQUEST", "control"),
    ("POST", "/channels", {"name": "a\x00b"}, 400, "MALFORMED_REQUEST", "control"),
    ("POST", "/channels", {"name": "n", "leaseMs": 0}, 400, "MALFORMED_REQUEST", "leaseMs"),
    ("POST", "/channels", {"name": "n", "leaseMs": -5}, 400, "MALFORMED_REQUEST", "leaseMs"),
    ("POST", "/channels", {"name": "n", "leaseMs": "30s"}, 400, "MALFORMED_REQUEST", "leaseMs"),
    ("POST", "/channels", {"name": "n", "leaseMs": 1.5}, 400, "MALFORMED_REQUEST", "leaseMs"),
    ("POST", "/channels", {"name": "n", "leaseMs": True}, 400, "MALFORMED_REQUEST", "leaseMs"),
    ("POST", "/channels", {"name": "n", "leaseMs": 10**20}, 400, "MALFORMED_REQUEST", "leaseMs"),
    ("POST", "/channels", {"name": "n", "maxDepth": 0}, 400, "MALFORMED_REQUEST", "maxDepth"),
    ("POST", "/channels", {"name": "n", "maxWaitMs": -1}, 400, "MALFORMED_REQUEST", "maxWaitMs"),
    ("POST", "/channels", {"name": "n", "graceMs": -1}, 400, "MALFORMED_REQUEST", "graceMs"),
    ("POST", "/channels", {"name": "n", "graceMs": 10**12}, 400, "MALFORMED_REQUEST", "graceMs"),
    ("POST", "enqueue", {}, 400, "MALFORMED_REQUEST", "clientId"),
    ("POST", "enqueue", {"clientId": 7}, 400, "MALFORMED_REQUEST", "clientId"),
    ("POST", "enqueue", {"clientId": ""}, 400, "MALFORMED_REQUEST", "clientId"),
    ("POST", "enqueue", {"clientId": LONG}, 400, "MALFORMED_REQUEST", "clientId"),
    ("POST", "enqueue", b"nope", 400, "MALFORMED_REQUEST", "JSON"),
    ("POST", "release", {"clientId": "c0"}, 400, "MALFORMED_REQUEST", "requestId"),
    (
        "POST",
        "release",
        {"clientId": "c0", "requestId": "r", "result": "ok"},
        400,
        "MALFORMED_REQUEST",
        "result",
    ),
    (
        "POST",
        "release",
        {"clientId": "c0", "requestId": "r", "result": {"success": "yes"}},
        400,
        "MALFORMED_REQUEST",
        "success",
    ),
    (
        "POST",
        "release",
        {"clientId": "c0", "requestId": "r", "result": {"success": False, "error": 3}},
        400,
        "MALFORMED_REQUEST",
        "error",
    ),
    ("POST", "abort", {"requestId": "r"}, 400, "MALFORMED_REQUEST", "clientId"),
    ("POST", "abort", {"clientId": "c0", "requestId": 5}, 400, "MALFORMED_REQUEST", "requestId"),
    ("POST", "renew", {"clientId": "c0"}, 400, "MALFORMED_REQUEST", "requestId"),
    (
        "POST",
        "renew",
        {"clientId": "c0", "requestId": "r", "leaseMs": 0},
        400,
        "MALFORMED_REQUEST",
        "leaseMs",
    ),
    ("POST", "steps", {"clientId": "c0", "step": "s", "event": "middle"}, 400, "MALFORMED_REQUEST", "event"),
    ("POST", "steps", {"clientId": "c0", "event": "start"}, 400, "MALFORMED_REQUEST", "step"),
    (
        "POST",
        "steps",
        {"clientId": "c0", "step": "s", "event": "end", "success": 1},
        400,
        "MALFORMED_REQUEST",
        "success",
    ),
    ("POST", "enqueue", b"{" + b'"clientId":"' + b"x" * 70_000 + b'"}', 413, "PAYLOAD_TOO_LARGE", "bytes"),
    ("GET", "/nowhere", None, 404, "ROUTE_NOT_FOUND", "/nowhere"),
    ("PUT", "/channels", {}, 405, "METHOD_NOT_ALLOWED", "PUT"),
    ("POST", "/channels/%0A/enqueue", {"clientId": "c"}, 400, "MALFORMED_REQUEST", "control"),
]


@pytest.mark.parametrize(("method", "where", "body", "status", "code", "words"), CASES)
async def test_bad_input(
    server: Server, method: str, where: str, body: Any, status: int, code: str, words: str
) -> None:
    await server.create("t")
    rid, _ = await server.enqueue("t", "c0")
    await server.enqueue("t", "c1")
    before_channels = (await server.call("GET", f"{server.url}/channels"))[1]
    before_queue = await server.queue("t")
    url = server.url + where if where.startswith("/") else server.path("t", where)
    raw = body if isinstance(body, bytes) else None
    got_status, got = await server.call(method, url, None if raw is not None else body, raw=raw)
    assert got_status == status, got
    assert got["code"] == code
    assert words in got["message"], got["message"]
    after_queue = await server.queue("t")
    for snapshot in (before_queue, after_queue):
        for q in snapshot["queue"]:
            q.pop("waitingMs")
    assert after_queue == before_queue
    assert (await server.call("GET", f"{server.url}/channels"))[1] == before_channels
    assert rid


async def test_unknown_query_parameters_are_ignored(server: Server) -> None:
    await server.create("t")
    status, body = await server.call("GET", server.path("t", "queue") + "?foo=bar&x=1")
    assert status == 200
    assert body["depth"] == 0


async def test_unknown_body_fields_are_ignored(server: Server) -> None:
    await server.create("t")
    status, body = await server.call("POST", server.path("t", "enqueue"), {"clientId": "c", "extra": [1, 2]})
    assert status == 200
    assert body["position"] == 0


async def test_client_key_cannot_create(server: Server) -> None:
    status, body = await server.call("POST", f"{server.url}/channels", {"name": "x"}, key=CLIENT_KEY)
    assert (status, body["code"]) == (403, "FORBIDDEN")
    assert (await server.call("GET", f"{server.url}/channels"))[1] == {"channels": []}


async def test_method_not_allowed_names_the_allowed_methods(server: Server) -> None:
    """A 405 says which methods the path takes (``Allow``), as HTTP asks; an unknown path is a 404 for any method."""
    ch = await server.create("allow")
    async with server.session.request("GET", server.path(ch, "enqueue")) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"
    async with server.session.request("DELETE", f"{server.url}/channels/{ch}/nowhere") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "ROUTE_NOT_FOUND"
