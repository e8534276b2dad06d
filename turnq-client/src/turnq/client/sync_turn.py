"""The blocking face of a server-backed turn: the async turn runs on the client's helper loop.

Entering blocks until the turn is granted; Ctrl-C while waiting gives the ticket up before the interrupt
propagates. The lease keeps being renewed on the helper thread while the caller's (blocking) body runs.
"""

from __future__ import annotations

from types import TracebackType

from .portal import Portal
from .remote_turn import RemoteAsyncTurn
from .turn import Turn


class RemoteTurn(Turn):
    def __init__(self, portal: Portal, inner: RemoteAsyncTurn) -> None:
        self._portal = portal
        self._inner = inner
        self._state = inner._state

    def __enter__(self) -> RemoteTurn:
        self._portal.call(self._inner.__aenter__)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._portal.call(self._inner.__aexit__, exc_type, exc, tb)

    def _report_step(
        self, name: str, event: str, success: bool | None = None, error: str | None = None
    ) -> None:
        self._portal.call(self._inner._report_step, name, event, success, error)

    def renew_now(self, lease_ms: int | None = None) -> int:
        """Extend the lease right away (on top of the background renewal); returns the new deadline."""
        return self._portal.call(self._inner.renew_now, lease_ms)
