"""API keys: 401 before any channel logic, roles and channel patterns give 403, keys never echoed."""

from __future__ import annotations

import pytest
from server_kit import ADMIN_KEY, CI_KEY, CLIENT_KEY, Server


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/channels"),
        ("POST", "/channels"),
        ("GET", "/metrics"),
        ("POST", "/channels/nope/enqueue"),
        ("GET", "/channels/nope/subscribe?clientId=a&requestId=b"),
        ("GET", "/channels/nope/observe"),
        ("DELETE", "/channels/nope/holder"),
    ],
)
async def test_missing_or_wrong_key_is_401_before_channel_logic(
    server: Server, method: str, path: str
) -> None:
    for key in (None, "wrong", ADMIN_KEY + "x", ADMIN_KEY[:-1]):
        status, body = await server.call(
            method, server.url + path, {"clientId": "c"} if method == "POST" else None, key=key
        )
        assert (status, body["code"]) == (401, "UNAUTHORIZED")
        assert "wrong" not in body["message"]
        assert ADMIN_KEY not in body["message"]


async def test_client_role(server: Server) -> None:
    await server.create("work")
    rid, _ = await server.enqueue("work", "c1", key=CLIENT_KEY)
    status, _ = await server.call("GET", server.path("work", "queue"), key=CLIENT_KEY)
    assert status == 200
    status, _ = await server.call(
        "POST", server.path("work", "renew"), {"clientId": "c1", "requestId": rid}, key=CLIENT_KEY
    )
    assert status == 200
    for method, url, body in (
        ("POST", f"{server.url}/channels", {"name": "new"}),
        ("DELETE", server.path("work"), None),
        ("DELETE", server.path("work", "holder"), None),
    ):
        status, err = await server.call(method, url, body, key=CLIENT_KEY)
        assert (status, err["code"]) == (403, "FORBIDDEN"), url
    status, _ = await server.call(
        "POST", server.path("work", "release"), {"clientId": "c1", "requestId": rid}, key=CLIENT_KEY
    )
    assert status == 204


async def test_channel_patterns(server: Server) -> None:
    await server.create("ci-build")
    await server.create("deploy")
    rid, _ = await server.enqueue("ci-build", "c1", key=CI_KEY)
    status, err = await server.call("POST", server.path("deploy", "enqueue"), {"clientId": "c1"}, key=CI_KEY)
    assert (status, err["code"]) == (403, "FORBIDDEN")
    status, err = await server.call("GET", server.path("deploy", "observe"), key=CI_KEY)
    assert (status, err["code"]) == (403, "FORBIDDEN")
    status, body = await server.call("GET", f"{server.url}/channels", key=CI_KEY)
    assert [c["name"] for c in body["channels"]] == ["ci-build"]
    assert rid
