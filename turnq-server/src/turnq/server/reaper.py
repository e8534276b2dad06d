"""The reaper: one task per process that sleeps until the nearest deadline and applies it through the rules.

It never ticks. Every committed batch carries its channel's next deadline, so the reaper keeps a heap of
``(deadline, channel)`` and re-arms one timer when the earliest moves. Applying an expiry is idempotent, so any
process may do it, and several replicas racing for the same deadline change nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging

from turnq.core import EventBatch, TurnqError, TurnService

log = logging.getLogger("turnq.server.reaper")

# Retry a channel whose expiry failed (backend unavailable) after this long.
RETRY_MS = 1_000


class Reaper:
    def __init__(self, service: TurnService) -> None:
        self.service = service
        self.deadlines: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._armed_for: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def on_batch(self, batch: EventBatch) -> None:
        if batch.deleted or batch.next_deadline is None:
            self.deadlines.pop(batch.channel, None)
            return
        self.schedule(batch.channel, batch.next_deadline)

    def schedule(self, channel: str, deadline: int) -> None:
        if self.deadlines.get(channel) == deadline:
            return
        self.deadlines[channel] = deadline
        heapq.heappush(self._heap, (deadline, channel))
        if len(self._heap) > 2 * len(self.deadlines) + 64:
            self._heap = [(d, c) for c, d in self.deadlines.items()]
            heapq.heapify(self._heap)
        if self._armed_for is None or deadline < self._armed_for:
            self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = None
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def start(self) -> None:
        for channel, deadline in (await self.service.backend.deadlines()).items():
            self.schedule(channel, deadline)
        self._task = asyncio.create_task(self._run(), name="turnq-reaper")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _pop_due(self, now: int) -> list[str]:
        due = []
        heap = self._heap
        while heap:
            deadline, channel = heap[0]
            if self.deadlines.get(channel) != deadline:
                heapq.heappop(heap)  # stale entry: the channel moved on
                continue
            if deadline > now:
                break
            heapq.heappop(heap)
            del self.deadlines[channel]
            due.append(channel)
        return due

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self.service.clock
        while True:
            for channel in self._pop_due(clock()):
                try:
                    await self.service.expire(channel)
                except TurnqError as exc:
                    log.warning("expiry on channel %r failed (%s); retrying", channel, exc.code.value)
                    self.schedule(channel, clock() + RETRY_MS)
                except Exception:
                    log.exception("expiry on channel %r failed; retrying", channel)
                    self.schedule(channel, clock() + RETRY_MS)
            self._wakeup = loop.create_future()
            if self._heap:
                # Entries may be stale; _pop_due drops them. Arm for the head, whatever it is.
                head = self._heap[0][0]
                self._armed_for = head
                self._timer = loop.call_later(max(0.0, (head - clock()) / 1000), self._wake)
            try:
                await self._wakeup
            finally:
                self._wakeup = None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._armed_for = None
