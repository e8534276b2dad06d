"""Fan-out of committed batches to this process's listeners."""

from __future__ import annotations

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
