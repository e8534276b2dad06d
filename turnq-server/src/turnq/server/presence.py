"""Presence across server processes, and bringing streams up to date when events may have been missed.

Each process says it is alive every second; one silent for five seconds is taken for dead by the others and the
tickets whose streams it held start their grace (their clients resubscribe elsewhere and keep their places). A
process that finds it was taken for dead re-attaches the streams it still holds. After a gap in the event feed
(a batch marked ``resync``), each local stream of the channel is told where its ticket stands now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from turnq.core import Event, EventBatch, TurnqError, TurnService
from turnq.core.limits import SUBSCRIBE_WINDOW_MS

from .hub import Hub, Stream

log = logging.getLogger("turnq.server")

# One write per process per interval, not one per ticket.
HEARTBEAT_S = 1.0
STALE_MS = 5_000


class Presence:
    def __init__(
        self,
        service: TurnService,
        hub: Hub,
        instance: str,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self.service = service
        self.hub = hub
        self.instance = instance
        self.spawn = spawn

    async def run(self) -> None:
        backend = self.service.backend
        clock = self.service.clock
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                now = clock()
                if not await backend.heartbeat(self.instance, now):
                    log.warning("this server had been taken for dead; re-attaching its open streams")
                    for stream in self.hub.ticket_streams():
                        if stream.attached:  # the others are attaching right now
                            self.spawn(self._reattach(stream))
                await backend.detach_stale(now, now - STALE_MS, SUBSCRIBE_WINDOW_MS)
            except TurnqError as exc:
                log.warning("presence heartbeat failed (%s); retrying", exc.code.value)
            except Exception:
                log.exception("presence heartbeat failed; retrying")

    async def _reattach(self, stream: Stream) -> None:
        assert stream.key is not None
        ticket, _, _ = await self.service.ticket_state(stream.channel, stream.key)
        if ticket is None:
            self.hub.end_ticket(stream)  # it ended while this process was not hearing about it
            return
        await self.service.attach(
            stream.channel, ticket.client_id, stream.key, stream.attachment, announce=False
        )

    def on_batch(self, batch: EventBatch) -> None:
        """The feed may have lost batches for this channel: bring this process's streams up to date."""
        if batch.resync:
            for stream in self.hub.ticket_streams(batch.channel):
                if stream.attached:  # the others hear where they stand from their attach
                    self.spawn(self._refresh(stream))

    async def _refresh(self, stream: Stream) -> None:
        assert stream.key is not None
        ticket, grant, position = await self.service.ticket_state(stream.channel, stream.key)
        if ticket is None:
            self.hub.end_ticket(stream)  # a resubscribe will answer REQUEST_NOT_FOUND
        elif grant is not None:
            if not stream.turn_sent:
                stream.send(Event.your_turn(stream.channel, grant))
        else:
            stream.send(Event.position("position-updated", stream.channel, stream.key, position))
