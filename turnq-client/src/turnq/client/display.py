"""The waiting line on a terminal: ``turnq run`` shows its position on stderr, only when stderr is a TTY.

A pipe or a log file gets nothing, so scripts and CI logs stay clean.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from .turn import AsyncTurn

LOCAL_REFRESH_S = 1.0


class PositionDisplay:
    def __init__(self, channel: str, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.channel = channel
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._shown = False
        self._last: int | None = None

    def update(self, position: int) -> None:
        if not self.enabled or position == self._last:
            return
        self._last = position
        if position == 0:
            self.clear()
            return
        ahead = "1 turn" if position == 1 else f"{position} turns"
        self.stream.write(f"\r\x1b[K[turnq] waiting on {self.channel!r}: {ahead} ahead")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    async def refresh(self, turn: AsyncTurn) -> None:
        """Re-read a local turn's position now and then: local waiters are not told when the line moves
        (they block on one predecessor), so only the display looks, and only on a terminal."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(LOCAL_REFRESH_S)
            position = turn.position
            if position is not None and position > 0:
                self.update(position)
