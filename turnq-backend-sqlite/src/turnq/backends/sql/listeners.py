"""Fan-out of committed batches to this process's listeners."""

from __future__ import annotations

import asyncio
import logging

from turnq.core import EventBatch, Listener

log = logging.getLogger("turnq.backends")


class ListenerSet:
    """The listeners of one backend. A failing listener is logged and skipped: the batch is committed, and the
    other listeners (the stream hub, the reaper) must still hear it."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def publish(self, batch: EventBatch) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(batch)
            except Exception:
                log.exception("a turnq listener failed on a batch for channel %r", batch.channel)


Turn = tuple["asyncio.Future[None] | None", "asyncio.Future[None]"]


class PublishOrder:
    """Publishes batches in the order their units took a turn, whatever order their commits finish in.

    A unit takes its turn while it still holds the channel's lock and then waits for its commit without the
    lock, so the next unit can start meanwhile; publishing waits for every earlier turn first, so listeners hear
    batches in commit order.
    """

    def __init__(self, listeners: ListenerSet) -> None:
        self._listeners = listeners
        self._tail: asyncio.Future[None] | None = None

    def take_turn(self) -> Turn:
        prev, mine = self._tail, asyncio.get_running_loop().create_future()
        self._tail = mine
        return prev, mine

    async def publish_in_turn(self, turn: Turn, batch: EventBatch | None) -> None:
        prev, mine = turn
        try:
            if prev is not None:
                await prev
            if batch is not None:
                self._listeners.publish(batch)
        finally:
            mine.set_result(None)

    async def drain(self) -> None:
        if self._tail is not None:
            await self._tail
