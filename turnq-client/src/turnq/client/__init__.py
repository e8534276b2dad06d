"""turnq.client: talk to a turnq server, or take turns on local file locks when there is none.

Start with :func:`create_coordinator` (blocking) or :func:`create_async_coordinator`; use
:class:`TurnqClient` / :class:`AsyncTurnqClient` for every protocol action.

Names are imported on first use, so a program (or ``turnq run --local``) that never talks to a server never
loads the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnq.core import ErrorCode, TurnqError

    from .coordinator import AsyncCoordinator, Coordinator, create_async_coordinator, create_coordinator
    from .durations import format_duration, parse_duration, parse_duration_ms
    from .errors import ServerUnavailableError, TurnLostError, WaitTimeoutError
    from .http import AsyncTurnqClient, TurnqClient
    from .local import LocalQueue, LocalTicket
    from .models import Channel, Enqueued, Event, Health, Holder, QueueInfo, Waiter
    from .turn import AsyncTurn, Turn

_WHERE = {
    "ErrorCode": "turnq.core",
    "TurnqError": "turnq.core",
    "AsyncCoordinator": ".coordinator",
    "Coordinator": ".coordinator",
    "create_async_coordinator": ".coordinator",
    "create_coordinator": ".coordinator",
    "format_duration": ".durations",
    "parse_duration": ".durations",
    "parse_duration_ms": ".durations",
    "ServerUnavailableError": ".errors",
    "TurnLostError": ".errors",
    "WaitTimeoutError": ".errors",
    "AsyncTurnqClient": ".http",
    "TurnqClient": ".http",
    "LocalQueue": ".local",
    "LocalTicket": ".local",
    "Channel": ".models",
    "Enqueued": ".models",
    "Event": ".models",
    "Health": ".models",
    "Holder": ".models",
    "QueueInfo": ".models",
    "Waiter": ".models",
    "AsyncTurn": ".turn",
    "Turn": ".turn",
}

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


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
