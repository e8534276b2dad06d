"""The errors a client raises beyond the protocol's own.

Every failure the server reports arrives as :class:`~turnq.core.TurnqError` with the protocol ``code``, so callers
catch one type. The few situations only a client can observe (the turn slipped away while work was running, a
bounded wait ran out, no server could be reached) get their own subclasses, so they can be caught on their own
without parsing messages.
"""

from __future__ import annotations

from turnq.core import ErrorCode, TurnqError

__all__ = ["ErrorCode", "ServerUnavailableError", "TurnLostError", "TurnqError", "WaitTimeoutError"]

# Codes with which the server says "this ticket does not hold the turn (any more)".
LOST_CODES = frozenset({ErrorCode.NOT_YOUR_TURN, ErrorCode.LEASE_EXPIRED, ErrorCode.REQUEST_NOT_FOUND})


class TurnLostError(TurnqError):
    """The turn (or the place in line) ended without this client releasing it.

    Raised at the next step and when the turn's block exits, so work done after the loss is never reported as a
    success. ``reason`` is the server's word for it (``lease_expired``, ``force_released``, ``disconnected``,
    ``aborted``…).
    """

    def __init__(self, channel: str, reason: str, message: str | None = None) -> None:
        code = ErrorCode.LEASE_EXPIRED if reason == "lease_expired" else ErrorCode.NOT_YOUR_TURN
        super().__init__(code, message or f"the turn on channel {channel!r} was lost ({reason})")
        self.channel = channel
        self.reason = reason


class WaitTimeoutError(TurnqError, TimeoutError):
    """Waiting for a turn took longer than allowed; the ticket was given up before this was raised.

    Also a :class:`TimeoutError`, so code that bounds waits generically catches it. Its code is
    ``WAIT_TIMEOUT``, a client-side code the server never sends; a server-side ``maxWaitMs`` eviction is
    reported the same way.
    """

    def __init__(self, channel: str, waited_s: float | None, message: str | None = None) -> None:
        text = message or (
            f"no turn on channel {channel!r} within {waited_s:g}s; the ticket was given up"
            if waited_s is not None
            else f"the wait on channel {channel!r} ran out; the ticket was given up"
        )
        super().__init__(ErrorCode.WAIT_TIMEOUT, text)
        self.channel = channel
        self.waited_s = waited_s


class ServerUnavailableError(TurnqError):
    """No configured server could be reached (refused, unresolvable, timed out, or cut off mid-answer).

    Carries ``BACKEND_UNAVAILABLE``: from the caller's side the coordination service is unavailable, whether the
    server or its database is the missing piece.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BACKEND_UNAVAILABLE, message)
