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

from turnq.core import Backend, ErrorCode, TurnqError, TurnService
from turnq.core.limits import SUBSCRIBE_WINDOW_MS

from .auth import Authenticator
from .config import ServerConfig
from .hub import Hub, Stream
from .metrics import Metrics
from .positions import PositionRefresher
from .presence import STALE_MS, Presence
from .reaper import Reaper

log = logging.getLogger("turnq.server")

# A closed stream's detach is retried this many times (backing off to 5 s) while the database is unreachable.
DETACH_ATTEMPTS = 40


class ServerState:
    def __init__(self, config: ServerConfig, backend: Backend) -> None:
        self.config = config
        self.service = TurnService(backend)
        self.auth = Authenticator(config.keys, required=not config.insecure_no_auth)
        self.hub = Hub()
        self.reaper = Reaper(self.service)
        self.metrics = Metrics(origin=backend.origin, backend=backend)
        self.positions = PositionRefresher(self.service, self.hub, self.spawn, config.position_refresh_s)
        self.started = time.monotonic()
        self.instance = f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"
        self._attachments = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.Task[None] | None = None
        self._presence: asyncio.Task[None] | None = None
        self.presence = Presence(self.service, self.hub, self.instance, self.spawn)

    def new_attachment(self) -> str:
        """A name for a subscriber stream, unique across processes and restarts."""
        return f"{self.instance}/{next(self._attachments)}"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run work that must finish even though the request that caused it is gone (a stream's detach)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def end_stream(self, stream: Stream) -> None:
        """A stream's response ended (told to, or the client went away): forget the stream, and start its
        ticket's grace unless the ticket is over or a newer stream took it over."""
        self.hub.discard(stream)
        if stream.key is not None and not (stream.ticket_over or stream.replaced):
            self.spawn(self.detach(stream.channel, stream.key, stream.attachment))

    async def detach(self, channel: str, request_id: str, attachment: str) -> None:
        """A stream closed: start its ticket's grace, retrying while the database is unreachable (otherwise
        the ticket would stay attached to this live process and never be dropped)."""
        delay = 0.2
        for _ in range(DETACH_ATTEMPTS):
            try:
                await self.service.detach(channel, request_id, attachment)
                return
            except TurnqError as exc:
                if exc.code is not ErrorCode.BACKEND_UNAVAILABLE:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        log.warning("gave up detaching a closed stream", extra={"channel": channel, "request_id": request_id})

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, TurnqError):
            log.warning("background task failed: %s (%s)", exc.message, exc.code.value)
        else:
            log.error("background task failed", exc_info=exc)

    async def start(self) -> None:
        backend = self.service.backend
        await backend.open()
        backend.add_listener(self.metrics.on_batch)
        backend.add_listener(self.reaper.on_batch)
        backend.add_listener(self.hub.on_batch)
        backend.add_listener(self.presence.on_batch)
        backend.add_listener(self.positions.on_batch)
        now = self.service.clock()
        await backend.heartbeat(self.instance, now)
        if backend.durable:
            # Tickets whose server is gone, and tickets nobody is attached to, start a fresh grace: their
            # clients get time to find this (restarted) server.
            await backend.detach_stale(now, now - STALE_MS, SUBSCRIBE_WINDOW_MS, refresh_detached=True)
        await self.reaper.start()
        self._keepalive = asyncio.create_task(self._keepalive_loop(), name="turnq-keepalive")
        self._presence = asyncio.create_task(self.presence.run(), name="turnq-presence")

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_s)
            self.hub.keepalive()

    async def shutdown_streams(self, reason: str) -> None:
        """Tell every stream the server is stopping, then hand its tickets' presence back: their graces start
        now, and clients resubscribe (here after a restart, or on another replica) to keep their places."""
        self.hub.shutdown(reason)
        try:
            await self.service.backend.retire(self.instance, self.service.clock(), SUBSCRIBE_WINDOW_MS)
        except TurnqError as exc:
            log.warning("could not hand back presence at shutdown (%s)", exc.code.value)

    async def stop(self) -> None:
        for task in (self._keepalive, self._presence):
            if task is not None:
                task.cancel()
        await self.reaper.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        backend = self.service.backend
        self.positions.stop()
        for listener in (
            self.positions.on_batch,
            self.presence.on_batch,
            self.hub.on_batch,
            self.reaper.on_batch,
            self.metrics.on_batch,
        ):
            backend.remove_listener(listener)
        await backend.close()
