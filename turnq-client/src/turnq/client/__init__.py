"""turnq.client: talk to a turnq server, or take turns on local file locks when there is none.

Start with :func:`create_coordinator` (blocking) or :func:`create_async_coordinator`; use
:class:`TurnqClient` / :class:`AsyncTurnqClient` for every protocol action.
"""

from turnq.core import ErrorCode, TurnqError

from .coordinator import AsyncCoordinator, Coordinator, create_async_coordinator, create_coordinator
from .durations import format_duration, parse_duration, parse_duration_ms
from .errors import ServerUnavailableError, TurnLostError, WaitTimeoutError
from .http import AsyncTurnqClient, TurnqClient
from .local import LocalQueue, LocalTicket
from .models import Channel, Enqueued, Event, Health, Holder, QueueInfo, Waiter
from .turn import AsyncTurn, Turn

__all__ = [
    "AsyncCoordinator",
    "AsyncTurn",
    "AsyncTurnqClient",
    "Channel",
    "Coordinator",
    "Enqueued",
    "ErrorCode",
    "Event",
    "Health",
    "Holder",
    "LocalQueue",
    "LocalTicket",
    "QueueInfo",
    "ServerUnavailableError",
    "Turn",
    "TurnLostError",
    "TurnqClient",
    "TurnqError",
    "WaitTimeoutError",
    "Waiter",
    "create_async_coordinator",
    "create_coordinator",
    "format_duration",
    "parse_duration",
    "parse_duration_ms",
]
