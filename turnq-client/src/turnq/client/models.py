"""What the server answers, as typed values with the snake_case forms of the wire names.

Parsing is lenient about fields it does not know (a newer server may add some) and strict about the ones it
needs, so a protocol mismatch fails loudly at the boundary instead of deep in caller code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnq.core import ErrorCode, TurnqError


def _need(data: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise TurnqError(ErrorCode.INTERNAL_ERROR, f"unexpected {what} from the server: missing {key!r}")
    return data[key]


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a channel, as the channel and queue views show it."""

    client_id: str
    request_id: str
    lease_expires_at: int | None = None
    fencing_token: int | None = None
    granted_at: int | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Holder | None:
        if not isinstance(data, dict) or not isinstance(data.get("clientId"), str):
            return None
        return cls(
            client_id=data["clientId"],
            request_id=str(data.get("requestId", "")),
            lease_expires_at=_opt_int(data, "leaseExpiresAt"),
            fencing_token=_opt_int(data, "fencingToken"),
            granted_at=_opt_int(data, "grantedAt"),
        )


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    lease_ms: int
    max_depth: int | None = None
    max_wait_ms: int | None = None
    grace_ms: int | None = None
    depth: int = 0
    active: bool = False
    holder: Holder | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Channel:
        name = _need(data, "name", str, "channel")
        return cls(
            name=name,
            lease_ms=_opt_int(data, "leaseMs") or 0,
            max_depth=_opt_int(data, "maxDepth"),
            max_wait_ms=_opt_int(data, "maxWaitMs"),
            grace_ms=_opt_int(data, "graceMs"),
            depth=_opt_int(data, "depth") or 0,
            active=bool(data.get("active", False)),
            holder=Holder.from_wire(data.get("holder")),
        )


@dataclass(frozen=True, slots=True)
class Enqueued:
    """A new ticket: the id to subscribe, release and renew with, and how many tickets are ahead."""

    client_id: str
    request_id: str
    position: int


@dataclass(frozen=True, slots=True)
class Waiter:
    client_id: str
    request_id: str
    position: int
    enqueued_at: int
    waiting_ms: int


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A channel's line. ``position`` of each waiter is 1-based, as the original's queue view has it."""

    channel: str
    depth: int
    active: bool
    holder: Holder | None
    queue: list[Waiter] = field(default_factory=list)

    @classmethod
    def from_wire(cls, data: Any) -> QueueInfo:
        raw = _need(data, "queue", list, "queue view")
        waiters = [
            Waiter(
                client_id=str(w.get("clientId", "")),
                request_id=str(w.get("requestId", "")),
                position=_opt_int(w, "position") or 0,
                enqueued_at=_opt_int(w, "enqueuedAt") or 0,
                waiting_ms=_opt_int(w, "waitingMs") or 0,
            )
            for w in raw
            if isinstance(w, dict)
        ]
        return cls(
            channel=str(data.get("channel", "")),
            depth=_opt_int(data, "depth") or 0,
            active=bool(data.get("active", False)),
            holder=Holder.from_wire(data.get("holder")),
            queue=waiters,
        )


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    channels: int
    uptime: float
    backend: str | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Health:
        ok = _need(data, "ok", bool, "health answer")
        uptime = data.get("uptime", 0)
        return cls(
            ok=ok,
            channels=_opt_int(data, "channels") or 0,
            uptime=float(uptime) if isinstance(uptime, int | float) else 0.0,
            backend=data.get("backend") if isinstance(data.get("backend"), str) else None,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its name (``your-turn``, ``turn-started``…) and its JSON data."""

    name: str
    data: dict[str, Any]
