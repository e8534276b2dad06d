"""What one server process holds: config, rules, hub, reaper, metrics, and its background tasks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from turnq.core import Backend, TurnService

from .auth import Authenticator
from .config import ServerConfig
from .hub import Hub
from .metrics import Metrics
from .reaper import Reaper

log = logging.getLogger("turnq.server")


class ServerState:
    def __init__(self, config: ServerConfig, backend: Backend) -> None:
        self.config = config
        self.service = TurnService(backend)
        self.auth = Authenticator(config.keys, required=not config.insecure_no_auth)
        self.hub = Hub()
        self.reaper = Reaper(self.service)
        self.metrics = Metrics(origin=backend.origin)
        self.started = time.monotonic()
        self.instance = f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"
        self._attachments = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.Task[None] | None = None

    def new_attachment(self) -> str:
        """A name for a subscriber stream, unique across processes and restarts."""
        return f"{self.instance}/{next(self._attachments)}"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run work that must finish even though the request that caused it is gone (a stream's detach)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def start(self) -> None:
        backend = self.service.backend
        await backend.open()
        backend.add_listener(self.metrics.on_batch)
        backend.add_listener(self.reaper.on_batch)
        backend.add_listener(self.hub.on_batch)
        if backend.durable:
            from turnq.core.limits import SUBSCRIBE_WINDOW_MS

            await backend.restart_grace(self.service.clock(), SUBSCRIBE_WINDOW_MS)
        await self.reaper.start()
        self._keepalive = asyncio.create_task(self._keepalive_loop(), name="turnq-keepalive")

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_s)
            self.hub.keepalive()

    def shutdown_streams(self, reason: str) -> None:
        self.hub.shutdown(reason)

    async def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        await self.reaper.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        backend = self.service.backend
        for listener in (self.hub.on_batch, self.reaper.on_batch, self.metrics.on_batch):
            backend.remove_listener(listener)
        await backend.close()
