"""The nouns of turnq: channels, tickets, grants and the events that announce changes to them.

Times are integer milliseconds since the Unix epoch: they are persisted by durable backends and survive a restart,
so they must be wall-clock, and the wire protocol speaks milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_LEASE_MS = 30_000
DEFAULT_GRACE_MS = 5_000


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A channel's settings; fixed for the channel's life."""

    name: str
    lease_ms: int = DEFAULT_LEASE_MS
    max_depth: int | None = None
    max_wait_ms: int | None = None
    grace_ms: int = DEFAULT_GRACE_MS
    created_at: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "leaseMs": self.lease_ms,
            "maxDepth": self.max_depth,
            "maxWaitMs": self.max_wait_ms,
            "graceMs": self.grace_ms,
        }


@dataclass(slots=True)
class Ticket:
    """One enqueue: a client's place in a channel's line.

    ``seq`` orders tickets within a channel (FIFO). ``attachment`` names the subscriber stream that currently
    represents the client (None while no stream is open); ``grace_deadline`` is when an absent client is dropped.
    """

    client_id: str
    request_id: str
    seq: int
    enqueued_at: int
    wait_deadline: int | None = None
    grace_deadline: int | None = None
    attachment: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """The holder's turn: who holds, since when, until when, and with which fencing token."""

    client_id: str
    request_id: str
    granted_at: int
    lease_deadline: int
    fencing_token: int
    enqueued_at: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "requestId": self.request_id,
            "grantedAt": self.granted_at,
            "leaseExpiresAt": self.lease_deadline,
            "fencingToken": self.fencing_token,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One change announced to streams.

    ``request_id`` addresses the ticket's subscriber stream; None addresses the channel's observers. ``name`` is
    the SSE event name; None marks a control message that writes no frame (a stream replaced, a ticket closed).
    ``final`` says the ticket is over: its stream ends after this event.
    """

    name: str | None
    data: dict[str, Any]
    request_id: str | None = None
    final: bool = False

    @classmethod
    def your_turn(cls, channel: str, grant: Grant) -> Event:
        """The holder's ``your-turn`` (sent again, unchanged, to a stream that resubscribes)."""
        return cls(
            "your-turn",
            {
                "channel": channel,
                "requestId": grant.request_id,
                "leaseExpiresAt": grant.lease_deadline,
                "fencingToken": grant.fencing_token,
            },
            request_id=grant.request_id,
        )

    @classmethod
    def position(cls, name: str, channel: str, request_id: str, position: int) -> Event:
        """Where a waiting ticket stands: ``queued`` (on subscribe) or ``position-updated``."""
        return cls(
            name, {"channel": channel, "requestId": request_id, "position": position}, request_id=request_id
        )


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The events of one committed unit of work on one channel, in order.

    ``next_deadline`` is the channel's nearest deadline after the change (lease, max wait or grace), so every
    process's reaper learns when to look at the channel again without polling. ``deleted`` tells listeners
    the channel is gone. ``resync`` marks a batch that carries no events of its own but says batches for the
    channel may have been lost (the feed reconnected): streams should be brought up to date.
    """

    channel: str
    events: tuple[Event, ...]
    next_deadline: int | None
    depth: int
    origin: str = ""
    deleted: bool = False
    resync: bool = False


@dataclass(frozen=True, slots=True)
class ChannelView:
    """A channel as listed: its settings, how many tickets it holds, and its holder."""

    spec: ChannelSpec
    depth: int
    holder: Grant | None

    def to_wire(self) -> dict[str, Any]:
        out = self.spec.to_wire()
        out["depth"] = self.depth
        out["active"] = self.holder is not None
        out["holder"] = self.holder.to_wire() if self.holder is not None else None
        return out


@dataclass(frozen=True, slots=True)
class QueueView:
    """A channel's line: the holder and the waiters in order."""

    channel: str
    holder: Grant | None
    waiters: list[Ticket] = field(default_factory=list)

    def to_wire(self, now: int) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "depth": len(self.waiters) + (1 if self.holder is not None else 0),
            "active": self.holder is not None,
            "holder": self.holder.to_wire() if self.holder is not None else None,
            "queue": [
                {
                    "clientId": t.client_id,
                    "requestId": t.request_id,
                    "position": i + 1,
                    "enqueuedAt": t.enqueued_at,
                    "waitingMs": max(0, now - t.enqueued_at),
                }
                for i, t in enumerate(self.waiters)
            ],
        }
