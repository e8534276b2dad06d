"""Connections parked with a transaction already begun, so the next group of units skips its ``BEGIN``.

A group ends with one script (writes, notifications, ``COMMIT``); ending it with ``BEGIN`` as well costs nothing,
and the next group, on any channel, then starts with its lock-and-probe: one round trip fewer, and no trip
through the pool. A ``BEGIN`` with no statement yet holds no lock and no snapshot, so a parked connection
disturbs nobody; still, one left unused for ``PARK_S`` is rolled back and returned to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .group import Held

PARK_S = 0.25


class Spares:
    def __init__(self, limit: int, discard: Callable[[Held], Awaitable[None]]) -> None:
        self.limit = limit
        self._discard = discard
        self._parked: list[tuple[Held, asyncio.TimerHandle]] = []
        self._discarding: set[asyncio.Task[None]] = set()

    def wanted(self) -> bool:
        return len(self._parked) < self.limit

    def park(self, held: Held) -> None:
        timer = asyncio.get_running_loop().call_later(PARK_S, self._expire, held)
        self._parked.append((held, timer))

    def take(self) -> Held | None:
        """The most recently parked connection (its transaction begun), or None."""
        while self._parked:
            held, timer = self._parked.pop()
            timer.cancel()
            if not held[1].is_closed():
                return held
            self._spawn(held)  # died while parked (the server restarted): back to the pool, discarded there
        return None

    def _expire(self, held: Held) -> None:
        for i, (h, _) in enumerate(self._parked):
            if h is held:
                del self._parked[i]
                self._spawn(held)
                return

    def _spawn(self, held: Held) -> None:
        task = asyncio.ensure_future(self._discard(held))
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def close(self) -> None:
        parked, self._parked = self._parked, []
        for held, timer in parked:
            timer.cancel()
            await self._discard(held)
        if self._discarding:
            await asyncio.wait(set(self._discarding), timeout=10)
