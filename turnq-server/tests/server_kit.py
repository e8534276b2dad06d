"""Helpers for server tests: a real turnq server on 127.0.0.1 (in this process's loop) and an HTTP client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from turnq.core.memory import MemoryBackend
from turnq.server import ServerConfig, create_app
from turnq.server.auth import ApiKey, Role
from turnq.server.routes import STATE_KEY
from turnq.server.state import ServerState

ADMIN_KEY = "admin-secret"
CLIENT_KEY = "client-secret"
CI_KEY = "ci-only-secret"
STEP_TIMEOUT = 10.0


class SSE:
    """Reads one SSE response frame by frame, every read bounded by a timeout."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.raw: list[str] = []

    async def _line(self, timeout: float) -> str | None:
        line = await asyncio.wait_for(self.response.content.readline(), timeout)
        if not line:
            return None
        text = line.decode()
        self.raw.append(text)
        return text.rstrip("\n")

    async def next(self, timeout: float = STEP_TIMEOUT) -> tuple[str, dict[str, Any]] | None:
        """The next event (comments skipped), or None when the server ended the stream."""
        name, data = None, None
        while True:
            line = await self._line(timeout)
            if line is None:
                return None
            if line.startswith(":"):
                continue
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
            elif line == "" and name is not None:
                return name, data or {}

    async def expect(self, *names: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """Skip to the next event named one of ``names`` and return its data."""
        while True:
            event = await self.next(timeout)
            assert event is not None, f"stream ended while waiting for {names}"
            if event[0] in names:
                return event[1]

    async def ended(self, timeout: float = STEP_TIMEOUT) -> bool:
        while True:
            event = await self.next(timeout)
            if event is None:
                return True

    def close(self) -> None:
        self.response.close()


@dataclass
class Server:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def state(self) -> ServerState:
        return self.app[STATE_KEY]

    def path(self, channel: str, action: str = "") -> str:
        return f"{self.url}/channels/{quote(channel, safe='')}" + (f"/{action}" if action else "")

    async def call(
        self, method: str, url: str, body: Any = None, key: str | None = ADMIN_KEY, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"x-api-key": key} if key is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["content-type"] = "application/json"
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def create(self, name: str = "ch", **settings: Any) -> str:
        status, body = await self.call("POST", f"{self.url}/channels", {"name": name, **settings})
        assert status == 201, body
        return name

    async def enqueue(self, channel: str, client_id: str, key: str = ADMIN_KEY) -> tuple[str, int]:
        status, body = await self.call("POST", self.path(channel, "enqueue"), {"clientId": client_id}, key)
        assert status == 200, body
        return body["requestId"], body["position"]

    async def release(self, channel: str, client_id: str, request_id: str, **extra: Any) -> int:
        status, _ = await self.call(
            "POST", self.path(channel, "release"), {"clientId": client_id, "requestId": request_id, **extra}
        )
        return status

    async def subscribe(self, channel: str, client_id: str, request_id: str, key: str = ADMIN_KEY) -> SSE:
        resp = await self.session.get(
            self.path(channel, "subscribe"),
            params={"clientId": client_id, "requestId": request_id},
            headers={"x-api-key": key},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        assert resp.status == 200, await resp.text()
        return SSE(resp)

    async def observe(self, channel: str) -> SSE:
        resp = await self.session.get(
            self.path(channel, "observe"),
            headers={"x-api-key": ADMIN_KEY},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        assert resp.status == 200, await resp.text()
        return SSE(resp)

    async def queue(self, channel: str) -> dict[str, Any]:
        status, body = await self.call("GET", self.path(channel, "queue"))
        assert status == 200, body
        return body  # type: ignore[no-any-return]


def make_config(**overrides: Any) -> ServerConfig:
    config = ServerConfig(
        keys=[
            ApiKey(ADMIN_KEY, Role.ADMIN, (), "admin"),
            ApiKey(CLIENT_KEY, Role.CLIENT, (), "client"),
            ApiKey(CI_KEY, Role.CLIENT, ("ci-*",), "ci"),
        ],
        database_url="memory://",
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class running_server:
    """Start a real server on 127.0.0.1 (an ephemeral port) in this loop; stop it on exit."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    async def __aenter__(self) -> Server:
        self.app = create_app(self.config, MemoryBackend())
        self.runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.session = aiohttp.ClientSession()
        return Server(f"http://127.0.0.1:{port}", self.app, self.session)

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.runner.cleanup()
