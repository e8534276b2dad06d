"""Position refresh for waiters behind the next in line.

The rules tell a waiter its new position at once only when it becomes next (position 1), so a handoff costs at
most one position frame however deep the line is. Every other position is refreshed here: a channel whose line
moved is read once, a couple of seconds later, and each waiting stream of this process that was told a larger
position hears its true one. That costs one read of the line per busy channel per interval, not a frame per
waiter per turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from turnq.core import Event, EventBatch, TurnService

from .hub import Hub


class PositionRefresher:
    def __init__(
        self,
        service: TurnService,
        hub: Hub,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        interval_s: float,
    ) -> None:
        self.interval_s = interval_s
        self.service = service
        self.hub = hub
        self.spawn = spawn
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def on_batch(self, batch: EventBatch) -> None:
        channel = batch.channel
        if batch.deleted:
            timer = self._timers.pop(channel, None)
            if timer is not None:
                timer.cancel()
            return
        # The line moves only when a ticket leaves it (its final event); tickets joining at the back, or
        # streams attaching, change nobody's position, so they arm no refresh.
        if channel in self._timers or not any(event.final for event in batch.events):
            return
        self._timers[channel] = asyncio.get_running_loop().call_later(self.interval_s, self._due, channel)

    def _due(self, channel: str) -> None:
        del self._timers[channel]
        self.spawn(self.refresh(channel))

    async def refresh(self, channel: str) -> None:
        waiting = {s.key: s for s in self.hub.ticket_streams(channel) if s.attached and not s.turn_sent}
        if not waiting:
            return
        view = await self.service.queue_view(channel)
        for position, ticket in enumerate(view.waiters, start=1):
            stream = waiting.get(ticket.request_id)
            if stream is not None and (stream.told is None or position < stream.told):
                stream.send(Event.position("position-updated", channel, ticket.request_id, position))

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
